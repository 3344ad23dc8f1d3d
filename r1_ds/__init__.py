"""r1_ds: R1 hierarchical-attention language models trained with DeepSpeed."""

__version__ = "0.1.0"

from .model import R1Config, R1ForCausalLM, R1ForSequenceClassification, R1Model  # noqa: E402  (registers Auto*)

__all__ = ["R1Config", "R1ForCausalLM", "R1ForSequenceClassification", "R1Model", "__version__"]
