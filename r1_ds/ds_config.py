"""Our training settings + a DeepSpeed JSON -> the dict `deepspeed.initialize` takes: batch and layout checked
once (r1_ds.config.resolve_batch), precision resolved, our LR schedule and optimizer defaults written in, and
the combinations DeepSpeed or r1-ds do not support refused with the numbers and the fix."""

from __future__ import annotations

import os

from .config import ConfigError, TrainConfig, check_compiled_length, resolve_batch
from .parallel.compression_config import compression_config
from .precision import resolve_precision


def find_ds_config(path: str) -> str:
    """`path` as given, else relative to the repository (so the default ds_configs/ works anywhere)."""
    if os.path.isfile(path) or os.path.isabs(path):
        return path
    repo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
    return repo if os.path.isfile(repo) else path


def _auto_keys(node, path: str = "") -> list[str]:
    """Dotted keys whose value is "auto" (ds_configs/hf_trainer_auto.json's placeholders)."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _auto_keys(value, f"{path}{key}.")]
    return [path[:-1]] if node == "auto" else []


def build_ds_config(cfg: TrainConfig, ds_json: dict, *, world_size: int, device_type: str):
    """The DeepSpeed dict to initialise with, plus (dims, batch plan, notes, parsed r1_compression section or None)."""
    auto = _auto_keys(ds_json)
    if auto:
        raise ConfigError(
            f'the DeepSpeed JSON {cfg.deepspeed_config} has "auto" at {auto}: HF Trainer and accelerate '
            "fill those, r1-ds train does not. Fix: use a recipe with values (e.g. "
            "ds_configs/zero1_dp.json) or write them in."
        )
    ds, compression = compression_config(ds_json)  # parsed once, now, not after deepspeed.initialize
    ds, notes = resolve_precision(ds, dtype=cfg.precision.dtype, apex=cfg.precision.apex, device_type=device_type)
    s = cfg.schedule
    if s.stages and s.global_batch is not None:
        raise ConfigError(
            f"schedule.global_batch={s.global_batch} and schedule.stages are both set: each stage has "
            "its own global_batch. Fix: remove schedule.global_batch."
        )
    first = s.stages[0].global_batch if s.stages else s.global_batch
    dims, plan = resolve_batch(
        world_size=world_size,
        pipe=cfg.parallel.pipe,
        tensor=cfg.parallel.tensor,
        data=cfg.parallel.data,
        ds_config=ds,
        micro_batch=cfg.data.micro_batch,
        global_batch=first,
        grad_accum=s.grad_accum,
        stage_batches=tuple(st.global_batch for st in s.stages[1:]),
    )
    ds.update(
        train_batch_size=plan.global_batch,
        train_micro_batch_size_per_gpu=plan.micro_batch,
        gradient_accumulation_steps=plan.grad_accum,
    )
    if "scheduler" in ds:
        notes.append(
            f"DeepSpeed JSON scheduler {ds['scheduler'].get('type')!r} ignored: r1-ds uses schedule.* "
            "(linear warm-up + cosine)"
        )
        ds.pop("scheduler")
    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    params = opt.setdefault("params", {})
    if s.lr is not None:
        params["lr"] = s.lr
    params.setdefault("lr", 3e-4)
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if dims.tensor > 1 and stage >= 3:
        raise ConfigError(
            f"parallel.tensor={dims.tensor} with zero_optimization.stage={stage}: ZeRO-3 would partition "
            "the tensor shards again, which r1-ds neither tests nor exports (the ZeRO-3 export reads "
            "tensor rank 0 only). Fix: set zero_optimization.stage to 0, 1 or 2, or parallel.tensor "
            "to 1."
        )
    if dims.pipeline_enabled and stage >= 2:
        raise ConfigError(
            f"parallel.pipe={dims.pipe} with zero_optimization.stage={stage}: DeepSpeed's pipeline "
            "engine supports ZeRO stage 0 or 1 only. Fix: set zero_optimization.stage to 1, or "
            "parallel.pipe to 1."
        )
    if cfg.model.compile and stage >= 3:
        raise ConfigError(
            f"model.compile=true with zero_optimization.stage={stage}: ZeRO-3 gathers and releases "
            "parameters in hooks around each module, which compiled blocks do not run the same way. "
            "Fix: set zero_optimization.stage to 0, 1 or 2, or model.compile to false."
        )
    if cfg.data.seq_len is not None:  # else the shards' length, checked once they are open (train.setup)
        check_compiled_length(cfg, cfg.data.seq_len, device_type)
    return ds, dims, plan, notes, compression
