"""Cross-modal alignment of images, text and code (docs/alignment.md).

    from r1_ds.align import info_nce, MineEstimator, pair_weights, recall_at_k, AlignHeads

Loss, estimator, heads and metrics are plain torch (+ transformers for the heads); the DeepSpeed training loop
is r1_ds/align/trainer.py, reached through `r1-ds train` with `align.objective` set.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "info_nce": "loss",
    "gather_rows": "loss",
    "MineEstimator": "mine",
    "pair_weights": "mine",
    "recall_at_k": "retrieval",
    "AlignHeads": "heads",
    "AlignHeadsConfig": "heads",
    "PAIRS": "heads",
    "AlignModel": "model",
    "AlignSettings": "settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):  # imported on first use: the config module reads AlignSettings without torch
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
