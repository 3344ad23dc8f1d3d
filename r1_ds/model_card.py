"""What an exported folder carries besides weights and code: the tokenizer's special-token ids in
config.json and generation_config.json (so generate() stops at end of text and pads batches), a plain
cross-entropy loss, and a model card (README.md: architecture, training data and steps, how to load)."""

from __future__ import annotations

import json
import os

from data_prep.atomic import atomic_write_text

SPECIAL = ("bos_token_id", "eos_token_id", "pad_token_id")


def prepare_release(model, tokenizer) -> None:
    """Set `model`'s config and generation config for release: special-token ids from `tokenizer` (when there
    is one; a pad id falls back to the eos id, as generate() does), label smoothing 0 (a training setting)."""
    config = model.config
    config.label_smoothing = 0.0
    if tokenizer is None:
        return
    ids = {name: getattr(tokenizer, name) for name in SPECIAL}
    if ids["pad_token_id"] is None:
        ids["pad_token_id"] = ids["eos_token_id"]
    for name, value in ids.items():
        setattr(config, name, value)
        setattr(model.generation_config, name, value)


def _data_summary(train_config: dict) -> str:
    data = train_config.get("data") or {}
    path = data.get("path")
    if not path or path == "synthetic":
        return "the built-in synthetic data set (no tokenizer)"
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        return f"packed shards at `{path}`"
    with open(meta_path) as f:
        meta = json.load(f)
    return (
        f"packed shards at `{path}`: {meta.get('num_sequences', '?')} rows of {meta.get('seq_len', '?')} tokens, "
        f"vocabulary {meta.get('vocab_size', '?')} (written by `r1-ds prep`)"
    )


def model_card(config, *, step, train_config: dict, layout: dict | None, has_tokenizer: bool) -> str:
    """The README.md of an exported folder."""
    sched = train_config.get("schedule") or {}
    c = config
    tok_line = "tok = AutoTokenizer.from_pretrained(path)\n" if has_tokenizer else ""
    gen = (
        (
            'ids = tok(["def ", "import os"], return_tensors="pt", padding=True)\n'
            "out = model.generate(**ids, max_new_tokens=32)\n"
            "print(tok.batch_decode(out, skip_special_tokens=True))\n"
        )
        if has_tokenizer
        else ""
    )
    return f"""---
library_name: transformers
tags: [r1_ds, hierarchical-attention, causal-lm]
---
# R1 hierarchical-attention language model

Exported by `r1-ds export` from a DeepSpeed checkpoint of `r1-ds train` (step {step}).

## Architecture
A decoder-only transformer (`model_type = "r1_ds"`, {c.num_hidden_layers} blocks, width {c.hidden_size},
SwiGLU {c.intermediate_size}, vocabulary {c.vocab_size}, RMSNorm, rotary positions) whose attention has three
levels over one q/k/v projection, weighed per token by a sigmoid gate:
- L1: a causal window of {c.local_window} tokens ({c.level_heads[0]} heads);
- L2: summaries of the last {c.document_size // c.paragraph_size} paragraphs of {c.paragraph_size} tokens, plus up
  to {c.route_top_k} earlier paragraphs chosen by entropy-based routing, at token resolution ({c.level_heads[1]} heads);
- L3: summaries of every earlier document group of {c.document_size} tokens ({c.level_heads[2]} heads).
Trained on sequences of up to {c.max_position_embeddings} tokens. Groups are counted from each sequence's first
token: padded batches (either side) and packed documents (`position_ids` restarting at 0) give what each
sequence alone gives.

## Training
- Data: {_data_summary(train_config)}.
- Steps: {step} of {sched.get("steps", "?")}; peak learning rate {sched.get("lr", "from the DeepSpeed JSON")},
  {sched.get("warmup_steps", 0)} warm-up steps, label smoothing {sched.get("label_smoothing", "?")} in training
  (the shipped loss is plain cross entropy).
- Layout: {layout or "one process"} (pipeline x tensor x data), merged into this one folder.

## How to load
```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "THIS_FOLDER"
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)  # or `import r1_ds.model` first
{tok_line}{gen}```
`attn_implementation="flex_attention"` selects the GPU fast path; "eager" (the default) is the reference.
{"" if has_tokenizer else "This folder has no tokenizer: the run trained on synthetic token ids."}
"""


def write_model_card(out: str, config, *, step, train_config: dict, layout: dict | None, has_tokenizer: bool) -> None:
    atomic_write_text(
        os.path.join(out, "README.md"),
        model_card(config, step=step, train_config=train_config, layout=layout, has_tokenizer=has_tokenizer),
    )
