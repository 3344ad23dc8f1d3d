"""What a resume may change, and how the changes that it can honour are applied.

- The model architecture and the training precision must be the checkpoint's: DeepSpeed would fail on
  the first mismatching tensor with a shape traceback, or load fp16 state into a bf16 run. Both are
  refused before anything loads, with the reason and the way to start from those weights instead.
- The learning-rate schedule (`schedule.lr`, `schedule.steps`, `schedule.warmup_steps`,
  `schedule.min_lr_ratio`) follows this run's settings: DeepSpeed restores the saved LambdaLR (its
  multiplier's fields and base LRs), which would silently keep the old schedule while train_config.json
  records the new one. `rebuild_schedule` puts this run's schedule back at the resumed step, so raising
  `--steps` extends a finished run along the new cosine.
"""

from __future__ import annotations

import logging

from .checkpoint import CheckpointError
from .metrics import log0

# R1Config fields that shape the weights or the computation; the rest (drop_path_rate, init, token ids,
# use_cache) may differ between a run and its resume
ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "level_heads",
    "local_window",
    "paragraph_size",
    "document_size",
    "route_top_k",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "label_smoothing",
    "tie_word_embeddings",
)


def check_same_model(saved_config: dict | None, config: dict, where: str) -> None:
    if not saved_config:
        return
    diff = {k: (saved_config.get(k), config.get(k)) for k in ARCH_FIELDS if saved_config.get(k) != config.get(k)}
    if diff:
        shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"resume: {where} holds another model ({shown}); its weights and optimizer state do not "
            "fit this one. Fix: resume with the saved model settings (model.preset / "
            "model.overrides), or start a new run in another output folder (to start from these "
            "weights where the shapes allow: export, then model.init_from=<export>)."
        )


def check_same_precision(saved_dtype: str | None, dtype: str, where: str) -> None:
    if saved_dtype is not None and saved_dtype != dtype:
        raise CheckpointError(
            f"resume: {where} was trained in {saved_dtype} and this run is {dtype}; DeepSpeed "
            f"keeps {saved_dtype}-specific optimizer and loss-scale state. Fix: resume with "
            f"precision.dtype={saved_dtype} (or the DeepSpeed JSON it used), or export it and start "
            f"a new {dtype} run with model.init_from=<export>."
        )


def rebuild_schedule(scheduler, multiplier, lr: float) -> None:
    """Give the LambdaLR restored by DeepSpeed this run's `multiplier` (a WarmupCosine) and peak `lr`, and
    set the LR of the step it resumes at; logs what changed."""
    old = [getattr(f, "__dict__", {}) for f in scheduler.lr_lambdas]
    old_lrs = list(scheduler.base_lrs)
    step = scheduler.last_epoch
    scheduler.lr_lambdas = [multiplier] * len(scheduler.optimizer.param_groups)
    scheduler.base_lrs = [lr] * len(scheduler.optimizer.param_groups)
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * multiplier(step)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
    if old and (old[0] != multiplier.__dict__ or any(b != lr for b in old_lrs)):
        log0(
            "resume: the LR schedule changed (peak lr %s -> %s, %s -> %s); it is rebuilt at step %d, lr now %.3g",
            old_lrs[0] if old_lrs else None,
            lr,
            old[0],
            multiplier.__dict__,
            step,
            scheduler._last_lr[0],
            level=logging.WARNING,
        )
