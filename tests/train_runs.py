"""Small training runs shared by test_train.py and test_export.py (each runs once per session).

All runs: tiny preset, fp32 (ds_configs/tiny_cpu.json), seq 64, 2 gloo ranks; 4 steps with a checkpoint
at step 2, except the NO_DROP runs (3 steps, no checkpoint). Each returns per-rank results: the
parameters it holds (HF names), the logits of a fixed probe batch from the trained engine, and the run
folder. The data-parallel run reads
packed shards with a tokenizer (written here in data_prep's format); the pipeline run synthetic data.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile

from r1_ds.local_ranks import run_distributed
from r1_ds.metrics import read_metrics
from tests.train_probe import probe_logits


@functools.cache
def _tmp() -> str:
    """One scratch folder per test session (created lazily: the spawned ranks import this module too)."""
    path = tempfile.mkdtemp(prefix="r1_ds_train_runs_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


BASE = {
    "deepspeed_config": "ds_configs/tiny_cpu.json",
    "model.preset": "tiny",
    "data.seq_len": 64,
    "schedule.steps": 4,
    "schedule.warmup_steps": 1,
    "schedule.drop_path_max": 0.2,
    "checkpoint.every": 2,
    "log.progress": False,
    "log.tensorboard": False,
    "seed": 7,
}


def _train_body(overrides: dict) -> dict:
    """Runs on every rank: train, then report what the tests compare."""
    from r1_ds.config import load_train_config
    from r1_ds.parallel.state_dict_mapping import pipe_layer_prefixes
    from r1_ds.train import train

    engine = train(load_train_config(None, overrides))
    module = engine.module
    from torch._dynamo.utils import counters

    out = {
        "rank": int(os.environ["RANK"]),
        "params": {},
        "optimizer_steps": engine.global_steps,
        "compiled_blocks": sum(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules()),
        "compiled_frames": counters["frames"]["ok"],
    }  # graphs dynamo built (recompiles included)
    if getattr(engine, "is_pipe_parallel", False):
        prefixes = pipe_layer_prefixes(module.r1_config)
        for local, layer in enumerate(module.forward_funcs):
            prefix = prefixes[local + module._local_start]
            if prefix and hasattr(layer, "state_dict"):
                out["params"].update({prefix + k: v.detach().clone() for k, v in layer.state_dict().items()})
        if "embed" in module.tied_modules:  # the tied copy on the last stage has no prefix of its own
            out["params"]["model.embed_tokens.weight"] = module.tied_modules["embed"].weight.detach().clone()
    else:
        out["params"] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    out["logits"] = probe_logits(engine)  # after the parameters: the probe runs the model
    return out


def _run(name: str, overrides: dict, world_size: int = 2) -> dict:
    out_dir = os.path.join(_tmp(), name)
    ranks = run_distributed(_train_body, world_size, {**BASE, "output_dir": out_dir, **overrides}, timeout=240)
    metrics = {r["step"]: r for r in read_metrics(os.path.join(out_dir, "metrics.jsonl"))}
    return {"dir": out_dir, "ranks": ranks, "metrics": metrics}


def _resume_from_step2(src: dict, name: str, overrides: dict) -> dict:
    """A fresh run folder holding only the source run's step-2 checkpoint, resumed to the end."""
    dst = os.path.join(_tmp(), name, "checkpoints")
    os.makedirs(dst)
    shutil.copytree(os.path.join(src["dir"], "checkpoints", "global_step2"), os.path.join(dst, "global_step2"))
    with open(os.path.join(dst, "latest"), "w") as f:
        f.write("global_step2")
    return _run(name, overrides)


def write_packed_shards(
    base: str,
    *,
    num_sequences: int = 96,
    seq_len: int = 64,
    vocab_size: int = 512,
    token_ids: tuple[int, int] | None = None,
) -> str:
    """A packed shard folder in data_prep's format (2 uint16 shards) with a word-level tokenizer at
    ../tokenizer (the same for every call with this vocab_size), rows drawn from `token_ids` [low, high)
    (default [2, vocab_size)); returns the shard folder."""
    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from data_prep.shards import format_meta, shard_record

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", eos_token="t1").save_pretrained(
        os.path.join(base, "tokenizer")
    )

    shards_dir = os.path.join(base, "shards")
    os.makedirs(shards_dir)
    rng = np.random.default_rng(0)
    low, high = token_ids or (2, vocab_size)
    shards = []
    for i, n in enumerate((num_sequences // 2, num_sequences - num_sequences // 2)):
        rows = np.stack(
            [np.resize(rng.integers(low, high, size=int(rng.integers(3, 9))), seq_len) for _ in range(n)]
        ).astype(np.uint16)
        rows.tofile(os.path.join(shards_dir, f"shard_{i:05d}.bin"))
        shards.append(shard_record(f"shard_{i:05d}.bin", rows))
    meta = format_meta(
        shards,
        seq_len=seq_len,
        vocab_size=vocab_size,
        eos_token_id=1,
        tokenizer_file=os.path.join(base, "tokenizer", "tokenizer.json"),
    )
    with open(os.path.join(shards_dir, "meta.json"), "w") as f:
        json.dump(meta, f)
    return shards_dir


@functools.cache
def packed_data() -> str:
    return write_packed_shards(os.path.join(_tmp(), "data"))


def _dp() -> dict:
    return {"schedule.global_batch": 4, "data.path": packed_data()}  # micro 2 (tiny_cpu.json) x data 2 -> gas 1


PP = {
    "parallel.pipe": 2,
    "schedule.stages": [{"steps": 2, "global_batch": 4, "data_fraction": 0.5}, {"global_batch": 8}],
}


@functools.cache
def data_parallel() -> dict:
    return _run("dp", _dp())


@functools.cache
def data_parallel_resumed() -> dict:
    return _resume_from_step2(data_parallel(), "dp_resumed", _dp())


@functools.cache
def pipeline() -> dict:
    return _run("pp", PP)


@functools.cache
def pipeline_resumed() -> dict:
    return _resume_from_step2(pipeline(), "pp_resumed", PP)


NO_DROP = {"schedule.drop_path_max": 0.0, "checkpoint.every": 0, "schedule.steps": 3}  # eager and inductor draw
# DropPath masks differently


@functools.cache
def data_parallel_eager_no_drop() -> dict:
    return _run("dp_eager", {**_dp(), **NO_DROP})


@functools.cache
def data_parallel_compiled_no_drop() -> dict:
    return _run("dp_compiled", {**_dp(), **NO_DROP, "model.compile": True})


@functools.cache
def pipeline_compiled_no_drop() -> dict:
    """The same 4-sequence batches as the data-parallel runs, as 2 pipeline stages x 2 micro-batches."""
    return _run("pp_compiled", {**_dp(), **NO_DROP, "parallel.pipe": 2, "model.compile": True})


@functools.cache
def data_parallel_compiled_drop_path() -> dict:
    """Compiled blocks with DropPath rising every step (BASE: drop_path_max 0.2)."""
    return _run("dp_compiled_drop", {**_dp(), "model.compile": True})
