"""What changes with the step: the learning-rate multiplier (linear warm-up, then cosine), the DropPath rate
(linear growth over training; its per-block scaling is the model's, r1_ds.model.modeling_r1.set_drop_path_rate),
the progressive stages (global batch and data fraction), and the seed of each step's randomness."""

from __future__ import annotations

import math

import numpy as np

from .config import TrainConfig
from .data import Stage


class WarmupCosine:
    """LR multiplier of optimizer step t: linear warm-up over `warmup` steps to 1, then cosine to
    `min_ratio` at step `total`. An object (not a lambda) so the scheduler's state dict keeps it."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        progress = min(1.0, (t - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def drop_path_rate(step: int, *, total: int, max_rate: float) -> float:
    """DropPath rate of optimizer step `step` (0-based) of `total`: grows linearly from 0 at the first step to
    `max_rate` (schedule.drop_path_max) at the last."""
    return max_rate * step / max(1, total - 1)


def resolve_stages(cfg: TrainConfig, first_batch: int) -> list[Stage]:
    """Progressive stages with explicit starts; no stages = one stage over the whole run."""
    s = cfg.schedule
    if not s.stages:
        return [Stage(start=0, steps=s.steps, global_batch=first_batch, data_fraction=1.0)]
    out, start = [], 0
    for i, st in enumerate(s.stages):
        steps = s.steps - start if i == len(s.stages) - 1 else st.steps
        out.append(Stage(start=start, steps=steps, global_batch=st.global_batch, data_fraction=st.data_fraction))
        start += steps
    return out


def step_seed(seed: int, step: int, data_rank: int, pipe_rank: int) -> int:
    """Randomness of one step (DropPath masks) as a function of (seed, step, rank): a resumed run draws
    the same masks, and tensor peers agree."""
    return int(np.random.SeedSequence([seed, step, data_rank, pipe_rank]).generate_state(1)[0])
