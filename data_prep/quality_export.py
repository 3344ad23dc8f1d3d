"""A trained quality head saved as a Hugging Face sequence-classification folder (the format of the FineWeb-Edu
classifier): the encoder's weights under ``bert.``, the head as ``classifier`` (1 x H), ``num_labels = 1``,
``problem_type = regression``, plus the tokenizer.

The head reads mean-pooled, L2-normalised token states, which no stock ``BertForSequenceClassification`` computes
(it reads the pooled [CLS] state), so the folder carries its model class (``modeling_r1_quality.py``, wired by
``auto_map``): ``AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)`` loads it and its
``logits[:, 0]`` are the head's scores (tested).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MODEL_FILE = "modeling_r1_quality.py"
CLASS_NAME = "R1MeanPoolBertForSequenceClassification"

_MODELING = '''"""Mean-pooled, L2-normalised BERT states -> one regression logit (an r1_ds quality head)."""

import torch
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class R1MeanPoolBertForSequenceClassification(BertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = torch.nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
        return SequenceClassifierOutput(logits=self.classifier(torch.nn.functional.normalize(pooled, dim=-1)))
'''


def save_sequence_classifier(backbone_dir: str, weight, bias, out_dir: Path, *, max_length: int) -> None:
    """Write the folder into ``out_dir`` (inside the head's atomic folder); ``weight`` (H,), ``bias`` (1,)."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(backbone_dir)
    if config.model_type != "bert":
        raise ValueError(f"quality head export: backbone {backbone_dir} is a {config.model_type}, not a BERT encoder")
    encoder = AutoModel.from_pretrained(backbone_dir)
    tensors = {f"bert.{k}": v.contiguous() for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    tensors["classifier.weight"] = weight.float().reshape(1, -1).contiguous()
    tensors["classifier.bias"] = bias.float().reshape(1).contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_dict()
    cfg.update(
        architectures=[CLASS_NAME],
        auto_map={"AutoModelForSequenceClassification": f"{MODEL_FILE[:-3]}.{CLASS_NAME}"},
        num_labels=1,
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
        problem_type="regression",
    )
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    (out_dir / MODEL_FILE).write_text(_MODELING, encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(backbone_dir)
    tok.model_max_length = max_length
    tok.save_pretrained(out_dir)
    readme = Path(backbone_dir) / "README.md"
    if readme.is_file():  # the encoder's licence and model card travel with its weights
        shutil.copyfile(readme, out_dir / "ENCODER_README.md")
