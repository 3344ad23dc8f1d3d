"""`r1-ds demo` (what `make demo` runs): the whole path on the built-in sample data, on CPU.

    1. r1-ds prep       the sample corpus (Python docs, standard-library sources, generated images)
                        -> cleaned text/code, a BPE tokenizer, packed training shards, triples
    2. deepspeed        train the tiny R1 model as a 2-stage DeepSpeed pipeline (2 CPU processes, gloo)
    3. r1-ds export     the pipeline checkpoint -> a Hugging Face folder
    4. r1-ds generate   text from the exported folder, through AutoModelForCausalLM
    5. r1-ds plot       the loss curve
    6. deepspeed        a short alignment stage (docs/alignment.md): the trained model aligns the sample triples'
                        images, captions and drawing code, data parallel with ZeRO-1 on 2 CPU processes, and the
                        held-out R@1 is printed beside chance
    7. evaluation       perplexity, text->code retrieval, image->text retrieval through the aligned encoders of
                        step 6 (on the synthetic shapes set), HumanEval pass@1 on a few problems (a table)

Each step is the same command a user would type; the demo prints them as it goes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import pathlib
import shlex
import subprocess
import sys

from .metrics import read_metrics

log = logging.getLogger("r1_ds.demo")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs/demo", help="folder for everything the demo writes (default: %(default)s)")
    p.add_argument("--steps", type=int, default=200, help="training steps (default: %(default)s)")
    p.add_argument("--global-batch", type=int, default=16, help="sequences per step (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=2048, help="tokenizer vocabulary (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per training row (default: %(default)s)")
    p.add_argument("--processes", type=int, default=2, help="training processes = pipeline stages (default: 2)")
    p.add_argument(
        "--align-steps",
        type=int,
        default=60,
        help="steps of the alignment stage after the LM stage (0: skip it; default: %(default)s)",
    )


def _run(cmd: list[str], env: dict) -> None:
    log.info("$ %s", shlex.join(cmd))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"r1-ds demo: this step failed with exit code {proc.returncode}: {shlex.join(cmd)}")


def run(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bindir = pathlib.Path(sys.executable).parent
    py = sys.executable
    env = {
        **os.environ,
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    data, run_dir, hf = out / "data", out / "run", out / "hf"

    _run(
        [
            py,
            "-m",
            "data_prep",
            "--out",
            str(data),
            "--vocab-size",
            str(args.vocab_size),
            "--seq-len",
            str(args.seq_len),
        ],
        env,
    )
    meta = json.loads((data / "shards" / "meta.json").read_text())
    log.info(
        "prep: %s packed rows of %s tokens, vocabulary %s", meta["num_sequences"], meta["seq_len"], meta["vocab_size"]
    )

    _run(
        [
            str(bindir / "deepspeed"),
            "--num_gpus",
            str(args.processes),
            "--module",
            "r1_ds.train",
            "--preset",
            "tiny",
            "--set",
            f"model.overrides.vocab_size={meta['vocab_size']}",
            "--set",
            f"model.overrides.max_position_embeddings={max(256, meta['seq_len'])}",
            "--data",
            str(data / "shards"),
            "--pipe",
            str(args.processes),
            "--steps",
            str(args.steps),
            "--global-batch",
            str(args.global_batch),
            "--warmup-steps",
            str(max(1, args.steps // 10)),
            "--lr",
            "3e-3",
            "--save-every",
            str(max(1, args.steps // 2)),
            "--output-dir",
            str(run_dir),
            "--resume",
            "none",
            "--no-progress",
        ],
        env,
    )

    _run([py, "-m", "r1_ds.cli", "export", str(run_dir / "checkpoints"), str(hf)], env)
    _run(
        [
            py,
            "-m",
            "r1_ds.cli",
            "generate",
            str(hf),
            "--prompt",
            "def ",
            "--max-new-tokens",
            "48",
            "--temperature",
            "0.8",
        ],
        env,
    )
    if importlib.util.find_spec("matplotlib") is not None:
        _run([py, "-m", "r1_ds.cli", "plot", str(run_dir)], env)
    else:
        log.warning("matplotlib is not installed: no loss curve (pip install 'r1_ds[plot]')")

    losses = [rec["loss"] for rec in read_metrics(str(run_dir / "metrics.jsonl"))]  # a resumed step's last record wins
    log.info(
        "loss %.3f -> %.3f over %d steps; Hugging Face folder: %s; curve: %s",
        losses[0],
        losses[-1],
        len(losses),
        hf,
        run_dir,
    )
    if args.align_steps:
        alignment_stage(out, data=data, hf=hf, steps=args.align_steps, processes=args.processes, env=env)

    from .evaluation.demo_table import evaluation_table

    log.info(
        "\n%s",
        evaluation_table(
            str(hf),
            shards=str(data / "shards"),
            triples=str(data / "triples" / "triples.jsonl"),
            align_run=str(out / "align") if args.align_steps else None,
        ),
    )
    return 0


ALIGN_REPORT = (("image", "text"), ("text", "code"), ("code", "text"))


def alignment_stage(
    out: pathlib.Path, *, data: pathlib.Path, hf: pathlib.Path, steps: int, processes: int, env: dict
) -> dict:
    """Align images, text and code of the sample triples, starting from the exported LM, data parallel with
    ZeRO-1; print the held-out R@1 of image->text, text->code and code->text beside chance."""
    from .align.trainer import read_retrieval

    run_dir = out / "align"
    ds_json = pathlib.Path(__file__).resolve().parent.parent / "ds_configs" / "tiny_cpu_zero1.json"  # ZeRO-1
    bindir = pathlib.Path(sys.executable).parent
    _run(
        [
            str(bindir / "deepspeed"),
            "--num_gpus",
            str(processes),
            "--module",
            "r1_ds.train",
            "--deepspeed_config",
            str(ds_json),
            "--set",
            "align.objective=align",
            "--set",
            f"align.triples={data}",
            "--set",
            f"model.init_from={hf}",
            "--set",
            "align.image_tower=RN50",
            "--set",
            "align.image_size=64",
            "--set",
            "align.proj_dim=64",
            "--set",
            "align.image_hidden=256",
            "--set",
            "align.code_len=96",
            "--set",
            "align.use_views=false",
            "--set",
            "align.image_repeats=4",
            "--set",
            f"align.eval_every={steps}",
            "--steps",
            str(steps),
            "--global-batch",
            "32",
            "--micro-batch",
            "16",
            "--warmup-steps",
            str(max(1, steps // 10)),
            "--lr",
            "3e-3",
            "--output-dir",
            str(run_dir),
            "--resume",
            "none",
            "--no-progress",
        ],
        env,
    )
    found = read_retrieval(str(run_dir / "metrics.jsonl"))
    for q, c in ALIGN_REPORT:
        key = f"eval/{q}->{c}"
        if f"{key}/R@1" in found:
            log.info(
                "held-out R@1 %-12s %.3f   (chance %.3f over %d rows)",
                f"{q}->{c}",
                found[f"{key}/R@1"],
                found[f"{key}/chance@1"],
                found[f"{key}/n"],
            )
    return found
