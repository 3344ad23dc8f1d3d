"""The R1 model as Hugging Face classes, registered with the Auto* factories on import."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .configuration_r1 import PRESETS, R1Config, R1ConfigError
from .modeling_r1 import (
    R1ForCausalLM,
    R1ForSequenceClassification,
    R1Model,
    R1PreTrainedModel,
    causal_lm_loss,
)

AutoConfig.register(R1Config.model_type, R1Config, exist_ok=True)
AutoModel.register(R1Config, R1Model, exist_ok=True)
AutoModelForCausalLM.register(R1Config, R1ForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(R1Config, R1ForSequenceClassification, exist_ok=True)

# save_pretrained copies the model code and writes an auto_map into config.json, so a process that
# never imported r1_ds can still load the folder with trust_remote_code=True.
R1Config.register_for_auto_class()
R1Model.register_for_auto_class("AutoModel")
R1ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
R1ForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "PRESETS",
    "R1Config",
    "R1ConfigError",
    "R1ForCausalLM",
    "R1ForSequenceClassification",
    "R1Model",
    "R1PreTrainedModel",
    "causal_lm_loss",
]
