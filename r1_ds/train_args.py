"""The flags of `r1-ds train` / `python -m r1_ds.train`, and their translation into dotted training-config keys
(the command line is the top of the precedence order: flags > --set > --config file > DeepSpeed JSON)."""

from __future__ import annotations

import argparse

from .config import COMPILED_FLEX_MAX_SEQ_LEN, parse_set

_FLAGS = {  # --flag -> dotted training-config key (the CLI is the top of the precedence order)
    "deepspeed_config": "deepspeed_config",
    "output_dir": "output_dir",
    "seed": "seed",
    "preset": "model.preset",
    "data": "data.path",
    "seq_len": "data.seq_len",
    "micro_batch": "data.micro_batch",
    "global_batch": "schedule.global_batch",
    "grad_accum": "schedule.grad_accum",
    "steps": "schedule.steps",
    "lr": "schedule.lr",
    "warmup_steps": "schedule.warmup_steps",
    "pipe": "parallel.pipe",
    "tensor": "parallel.tensor",
    "save_every": "checkpoint.every",
    "checkpoint_dir": "checkpoint.dir",
    "resume": "checkpoint.resume",
    "log_every": "log.every",
    "compile": "model.compile",
    "trust_checkpoint": "checkpoint.trust",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="training config (YAML or JSON); see docs/training.md")
    p.add_argument(
        "--deepspeed_config",
        "--deepspeed-config",
        dest="deepspeed_config",
        help="DeepSpeed JSON (default: the training config's, else ds_configs/tiny_cpu.json)",
    )
    p.add_argument("--output-dir", dest="output_dir", help="run folder: metrics, TensorBoard, checkpoints")
    p.add_argument("--preset", help="model size: tiny, 125m, 350m, 1.3b")
    p.add_argument("--data", help="packed shard folder (default: synthetic sample data)")
    p.add_argument("--seq-len", dest="seq_len", type=int, help="tokens per training row (default: the shards')")
    p.add_argument("--micro-batch", dest="micro_batch", type=int, help="sequences per rank per micro-step")
    p.add_argument("--global-batch", dest="global_batch", type=int, help="sequences per optimizer step")
    p.add_argument("--grad-accum", dest="grad_accum", type=int, help="micro-steps per optimizer step")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup-steps", dest="warmup_steps", type=int, help="linear learning-rate warm-up steps")
    p.add_argument("--pipe", type=int, help="pipeline stages")
    p.add_argument("--tensor", type=int, help="tensor-parallel size")
    p.add_argument("--save-every", dest="save_every", type=int, help="checkpoint every N steps (0: at the end)")
    p.add_argument(
        "--checkpoint-dir", dest="checkpoint_dir", help="checkpoint folder (default: OUTPUT_DIR/checkpoints)"
    )
    p.add_argument("--resume", help='"auto" (default), "none", or a checkpoint folder')
    p.add_argument(
        "--trust-checkpoint",
        dest="trust_checkpoint",
        action="store_true",
        default=None,
        help="unpickle the resumed checkpoint as it is (checkpoint.trust): only for checkpoints from a "
        "source you trust; by default they are read weights-only and other Python objects are refused",
    )
    p.add_argument("--log-every", dest="log_every", type=int, help="log metrics every N steps")
    p.add_argument("--seed", type=int, help="seed of the initial weights and the data order")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any training-config field, e.g. --set schedule.drop_path_max=0.1 (repeatable)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="torch.compile each decoder block (model.compile; on a GPU, sequences of up to "
        f"{COMPILED_FLEX_MAX_SEQ_LEN:,} tokens)",
    )
    # Launchers append these; DeepSpeed reads LOCAL_RANK from the environment anyway.
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)


def cli_overrides(args: argparse.Namespace) -> dict:
    out = {key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag, None) is not None}
    if getattr(args, "progress", None) is False:
        out["log.progress"] = False
    for item in args.set:
        key, value = parse_set(item)
        out[key] = value
    return out
