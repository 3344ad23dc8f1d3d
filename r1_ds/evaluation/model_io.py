"""Load an exported Hugging Face folder (from `r1-ds export`) for evaluation."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Embed = Callable[[list], "torch.Tensor"]  # texts, codes or image paths -> (n, d) embeddings


class EvalInputError(ValueError):
    """Bad evaluation input (model folder, data files, arguments); the message names it and the fix."""


def check_model_dir(path: str, *, needs_tokenizer: bool = True) -> None:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise EvalInputError(
            f"--model {path!r} has no config.json: it is not a Hugging Face folder. Fix: pass a "
            "folder written by `r1-ds export` (or `save_pretrained`)."
        )
    if needs_tokenizer and not any(
        os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    ):
        raise EvalInputError(
            f"--model {path!r} has no tokenizer: this task needs one to read text. Fix: export a "
            "run that trained on `r1-ds prep` shards (the export copies their tokenizer), or save "
            "a tokenizer into the folder with `tokenizer.save_pretrained`."
        )


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def load_causal_lm(path: str, *, device: str = "cpu", needs_tokenizer: bool = True, dtype: str | None = None):
    """(model in eval mode on `device`, tokenizer or None) from an exported folder; dtype: bf16, fp16 or fp32
    (None: the folder's own)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import r1_ds.model  # noqa: F401  (registers the R1 classes with Auto*)

    check_model_dir(path, needs_tokenizer=needs_tokenizer)
    import torch

    kwargs = {"dtype": getattr(torch, DTYPES[dtype])} if dtype else {}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path) if needs_tokenizer else None


def require_positive(**values) -> None:
    """Refuse numeric arguments that are not > 0 (None: not given), naming them as CLI flags."""
    bad = {k: v for k, v in values.items() if v is not None and not v > 0}
    if bad:
        flags = ", ".join(f"--{k.replace('_', '-')}={v}" for k, v in bad.items())
        raise EvalInputError(f"{flags}: must be > 0. Fix: pass a positive number or leave the flag out.")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
