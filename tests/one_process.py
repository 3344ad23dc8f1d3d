"""`r1_ds.train.train` in the test process as a world of one (gloo), for the cheap fault and safety tests.

Tiny model (vocabulary 256), synthetic data, seq 32, fp32 (ds_configs/tiny_cpu.json: micro 2 x grad_accum 2),
6 steps with a checkpoint every 2, fixed seed. The first run creates the world of one; it stays for the test
session (DeepSpeed caches its groups, so a destroyed world cannot be made again in one process). The launcher
watchdog is off here: the test process is not a launched rank (tests/test_safety.py tests the watchdog).
"""

from __future__ import annotations

import os

from r1_ds.metrics import read_metrics

TINY = {
    "deepspeed_config": "ds_configs/tiny_cpu.json",
    "model.preset": "tiny",
    "model.overrides": {"vocab_size": 256},
    "data.seq_len": 32,
    "data.synthetic_sequences": 64,
    "schedule.steps": 6,
    "schedule.warmup_steps": 1,
    "checkpoint.every": 2,
    "log.progress": False,
    "log.tensorboard": False,
    "seed": 3,
}


def config(out_dir: str, **overrides):
    """TINY plus dotted overrides (`__` stands for `.`) into `out_dir`."""
    from r1_ds.config import load_train_config

    return load_train_config(
        None, {**TINY, "output_dir": str(out_dir), **{k.replace("__", "."): v for k, v in overrides.items()}}
    )


def train_once(out_dir: str, **overrides):
    """Train into `out_dir`; returns the engine. The rank variables that `init_distributed` sets for a world of
    one are removed again afterwards (os.environ is restored): processes that later tests start would inherit
    them, and this process's store port."""
    from unittest import mock

    from r1_ds.train import train

    with mock.patch.dict(os.environ), mock.patch("r1_ds.run_lock.exit_with_launcher", lambda: None):
        return train(config(out_dir, **overrides))


def losses(out_dir: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(str(out_dir), "metrics.jsonl"))}


def lrs(out_dir: str) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in read_metrics(os.path.join(str(out_dir), "metrics.jsonl"))}
