"""`r1-ds export` of an alignment run's checkpoint: the R1 model as the usual Hugging Face folder (it loads with
`AutoModelForCausalLM.from_pretrained(OUT)`, tokenizer and model card included) and the projection heads and
temperatures in OUT/align_heads (`AlignHeads.from_pretrained(OUT/align_heads)`).

The heads' sizes are read off their weights (image_dim, hidden and projection sizes) and the temperature bounds
off the run's `align` settings in the checkpoint, so any alignment checkpoint exports, whichever trainer version
wrote it.
"""

from __future__ import annotations

import os

import torch

from ..checkpoint import CheckpointError

HEADS_FOLDER = "align_heads"
"""Subfolder of the export holding the heads."""


def heads_config(heads: dict[str, torch.Tensor], align: dict):
    """AlignHeadsConfig of the heads' state dict `heads` and the run's `align` settings."""
    from .heads import AlignHeadsConfig

    proj_dim, hidden_size = heads["text_proj.weight"].shape
    image_hidden = heads["image_proj.1.weight"].shape[0] if "image_proj.3.weight" in heads else 0
    return AlignHeadsConfig(
        hidden_size=hidden_size,
        image_dim=heads["image_mean"].shape[0],
        proj_dim=proj_dim,
        image_hidden=image_hidden,
        **{k: align[k] for k in ("init_temperature", "min_temperature", "max_temperature") if k in align},
    )


def tokenizer_dir(train_config: dict) -> str | None:
    """The tokenizer the run read text and code with: align.tokenizer, or the prep folder's (trainer.load_tokenizer)."""
    align = train_config.get("align") or {}
    if align.get("tokenizer"):
        return align["tokenizer"]
    triples = align.get("triples")
    if not triples:
        return None
    root = triples if os.path.isdir(triples) else os.path.dirname(os.path.dirname(triples))
    return os.path.join(root, "tokenizer")


def export_align(tag_dir: str, out: str, *, dtype: str | None = None, trusted: bool = False) -> str:
    """Write the LM folder and OUT/align_heads from an alignment checkpoint's tag folder; returns `out`."""
    from ..checkpoint_export import (
        _check_replaceable,
        _write_hf_folder,
        check_finite,
        check_output_folder,
        export_folder,
        hf_state_dict,
    )
    from ..metrics import log0
    from .heads import AlignHeads

    sd, state = hf_state_dict(tag_dir, trusted=trusted)
    check_finite(sd, tag_dir)
    lm = {k.removeprefix("lm."): v for k, v in sd.items() if k.startswith("lm.")}
    head_sd = {k.removeprefix("heads."): v for k, v in sd.items() if k.startswith("heads.")}
    other = sorted(set(sd) - {f"lm.{k}" for k in lm} - {f"heads.{k}" for k in head_sd})
    if not lm or not head_sd or other:
        raise CheckpointError(
            f"{tag_dir}: an alignment checkpoint holds the LM (lm.*) and the heads (heads.*); this "
            f"one has {len(lm)} LM and {len(head_sd)} head tensors and {other[:4]} besides. Fix: "
            "export a checkpoint that `r1-ds train` with align.objective wrote."
        )
    train_config = state.get("r1_train_config") or {}
    heads = AlignHeads(heads_config(head_sd, train_config.get("align") or {}))
    heads.load_state_dict(head_sd, strict=True)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(dtype)
    heads = heads.to(torch_dtype or next(iter(head_sd.values())).dtype)
    tok = tokenizer_dir(train_config)
    out = os.path.abspath(out)
    check_output_folder(out, "export folder")
    _check_replaceable(out)
    with export_folder(out) as tmp:
        _write_hf_folder(tmp, lm, {**state, "r1_tokenizer_dir": tok}, tag_dir=tag_dir, dtype=dtype)
        heads.save_pretrained(os.path.join(tmp, HEADS_FOLDER))
    log0(
        "exported the alignment checkpoint %s (step %s): LM in %s, heads in %s",
        tag_dir,
        state.get("global_steps"),
        out,
        os.path.join(out, HEADS_FOLDER),
    )
    return out
