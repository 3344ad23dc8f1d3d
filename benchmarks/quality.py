"""Held-out loss at equal tokens: R1 against a Hugging Face Llama of the same size, on a real offline corpus.

    python benchmarks/quality_corpus.py                                  # once: .quality_data/pack (CPU, ~4 min)
    python benchmarks/quality.py --data .quality_data/pack --deepspeed-config /tmp/r1_bf16.json \
        --token-budget 16e6 --export-r1 $OUT/r1_hf --json benchmarks/results/quality_h100.json
    python benchmarks/quality.py --tiny --data /tmp/qc/pack              # CPU, seconds (what the test runs)

Both models see the same tokenizer and packed rows in the same order (seed), the same token count, learning-rate
schedule (linear warm-up, cosine to 10%), DeepSpeed config, weight decay groups and gradient clipping:
  R1     through `r1-ds train` itself (r1_ds.train.train, in this process): held-out loss every --eval-every steps
         by the trainer's own evaluation (log.eval_every), plain cross entropy; then `r1-ds export` of its last
         checkpoint to --export-r1 (the folder HumanEval and `r1-ds eval` read);
  Llama  `r1-ds train` cannot build it, so it runs through the trainer's own pieces (build_ds_config, param_groups,
         WarmupCosine, ProgressiveSampler, batch_iterator, train_step_data_parallel, engine_heldout_loss) in the
         same order: the same engine path, loop and evaluation.
Llama has R1's width, depth, SwiGLU width, vocabulary and tied embeddings, and as many heads as R1's middle level
(head size 64), SDPA attention. Label smoothing is off for R1 (Llama's loss has none), so both train on plain
cross entropy. At the end each model's held-out loss over the whole held-out split (r1_ds.evaluation.perplexity,
the function `r1-ds eval perplexity` runs) goes into the table. Writes JSON (with date, card, commit and command)
and one PNG of both held-out curves against tokens.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        default=os.path.join(ROOT, ".quality_data", "pack"),
        help="folder with train/ and heldout/ shards (benchmarks/quality_corpus.py)",
    )
    p.add_argument("--preset", default="125m")
    p.add_argument("--models", nargs="+", default=["r1", "llama"], choices=["r1", "llama"])
    p.add_argument("--seq-len", type=int, help="tokens per row (default: the shards')")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--global-batch", type=int, default=16, help="rows per optimizer step")
    p.add_argument("--token-budget", type=float, default=16e6, help="training tokens per model (sets the steps)")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup-frac", type=float, default=0.05, help="share of the steps in linear warm-up")
    p.add_argument("--eval-every", type=int, default=0, help="steps between held-out evaluations (0: ~16 per run)")
    p.add_argument("--eval-sequences", type=int, default=64, help="held-out rows per evaluation during training")
    p.add_argument("--final-sequences", type=int, default=0, help="held-out rows of the final evaluation (0: all)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--deepspeed-config", default=os.path.join(ROOT, "ds_configs", "single_gpu_bf16.json"))
    p.add_argument("--work-dir", default="/tmp/r1_quality", help="run folders (checkpoints: GBs at 125m)")
    p.add_argument("--export-r1", help="export the trained R1 here as a Hugging Face folder (`r1-ds export`)")
    p.add_argument(
        "--export-llama", help="save the trained Llama here (save_pretrained; benchmarks/passkey.py reads it)"
    )
    p.add_argument("--json", help="results (default: benchmarks/results/quality_<card>.json)")
    p.add_argument("--png", help="curves (default: the JSON path with .png)")
    p.add_argument(
        "--tiny", action="store_true", help="CPU check: tiny preset, seq 128, ds_configs/tiny_cpu.json, 2 evaluations"
    )
    args = p.parse_args(argv)
    if args.tiny:
        args.preset, args.seq_len, args.micro_batch, args.global_batch = "tiny", args.seq_len or 128, 2, 4
        args.deepspeed_config = os.path.join(ROOT, "ds_configs", "tiny_cpu.json")
        args.lr = 3e-3
    return args


def provenance(script: str, argv) -> dict:
    """Date, card, commit (and whether the tree differed from it), the command that made a result."""
    try:
        commit = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = None, None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "commit": commit,
        "dirty": dirty,
        "command": shlex.join(["python", os.path.relpath(os.path.abspath(script), ROOT), *argv]),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def train_config(args, name: str, vocab_size: int, seq_len: int, steps: int, eval_every: int):
    """The `r1-ds train` settings both models share (R1 runs them through the trainer itself)."""
    from r1_ds.config import load_train_config

    out = os.path.join(args.work_dir, name)
    shutil.rmtree(out, ignore_errors=True)  # a fresh run folder (scratch: its checkpoint is exported, not resumed)
    overrides = {
        "deepspeed_config": args.deepspeed_config,
        "output_dir": out,
        "seed": args.seed,
        "model.preset": args.preset,
        "model.overrides": {"vocab_size": vocab_size, "max_position_embeddings": seq_len},
        "data.path": os.path.join(args.data, "train"),
        "data.seq_len": seq_len,
        "data.micro_batch": args.micro_batch,
        "schedule.global_batch": args.global_batch,
        "schedule.steps": steps,
        "schedule.lr": args.lr,
        "schedule.warmup_steps": max(1, int(args.warmup_frac * steps)),
        "schedule.label_smoothing": 0.0,
        "checkpoint.every": 0,
        "checkpoint.resume": "none",
        "log.every": eval_every,
        "log.eval_every": eval_every,
        "log.eval_data": os.path.join(args.data, "heldout"),
        "log.eval_sequences": args.eval_sequences,
        "log.progress": False,
        "log.tensorboard": False,
    }
    return load_train_config(None, overrides)


def llama_model(preset: str, vocab_size: int, seq_len: int):
    from benchmarks.llama_reference import llama_like
    from r1_ds.model import R1Config

    return llama_like(R1Config.from_preset(preset), max_positions=seq_len, vocab_size=vocab_size)


def train_r1(cfg):
    """`r1-ds train` (r1_ds.train.train) as the CLI runs it; (engine, held-out curve from its metrics.jsonl)."""
    from r1_ds.metrics import read_metrics
    from r1_ds.train import train

    engine = train(cfg)
    records = read_metrics(os.path.join(cfg.output_dir, "metrics.jsonl"))
    return engine, [
        {"step": r["step"], "train_loss": r["loss"], "heldout_loss": r["heldout_loss"], "elapsed_s": r["elapsed_s"]}
        for r in records
        if r.get("heldout_loss") is not None
    ]


def train_dense(cfg, model):
    """Llama through the trainer's pieces, in train()'s order; (engine, held-out curve)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    from r1_ds.config import read_mapping
    from r1_ds.data import ProgressiveSampler, batch_iterator, open_dataset
    from r1_ds.distributed import init_distributed
    from r1_ds.evaluation.during_training import engine_heldout_loss
    from r1_ds.parallel.deepspeed_patches import (
        needs_fp32_clip_patch,
        patch_fp32_grad_clipping,
    )
    from r1_ds.train import (
        WarmupCosine,
        build_ds_config,
        find_ds_config,
        param_groups,
        resolve_stages,
        train_step_data_parallel,
    )

    init_distributed()
    ds_config, _, plan, _, _ = build_ds_config(
        cfg,
        read_mapping(find_ds_config(cfg.deepspeed_config)),
        world_size=1,
        device_type=get_accelerator().device_name(),
    )
    vocab = model.config.vocab_size
    dataset, seq_len = open_dataset(cfg.data.path, seq_len=cfg.data.seq_len, vocab_size=vocab, seed=cfg.seed)
    sampler = ProgressiveSampler(len(dataset), resolve_stages(cfg, plan.global_batch), cfg.seed)
    heldout = open_dataset(cfg.log.eval_data, seq_len=seq_len, vocab_size=vocab)[0]
    s = cfg.schedule
    schedule = WarmupCosine(s.warmup_steps, s.steps, s.min_lr_ratio)
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, ds_config["optimizer"]["params"].get("weight_decay", 0.0)),
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    if needs_fp32_clip_patch(engine):
        patch_fp32_grad_clipping(engine)
    curve, t0 = [], time.perf_counter()
    for step in range(s.steps):
        micro = sampler.micro_batches(
            step, data_rank=0, data_size=1, micro_batch=engine.train_micro_batch_size_per_gpu()
        )
        loss = train_step_data_parallel(
            engine, batch_iterator(dataset, micro, seq_len), engine.gradient_accumulation_steps()
        )
        done = step + 1
        if done % cfg.log.eval_every == 0 or done == s.steps:
            curve.append(
                {
                    "step": done,
                    "train_loss": float(loss),
                    "elapsed_s": time.perf_counter() - t0,
                    "heldout_loss": engine_heldout_loss(
                        engine, heldout, seq_len=seq_len, pipeline=False, sequences=cfg.log.eval_sequences
                    ),
                }
            )
            print(
                f"llama step {done}/{s.steps}: train {float(loss):.4f} held-out {curve[-1]['heldout_loss']:.4f}",
                flush=True,
            )
    return engine, curve


def final_heldout(model, args, seq_len: int) -> dict:
    """Plain cross entropy over the held-out split (r1_ds.evaluation.perplexity, as `r1-ds eval perplexity`)."""
    from r1_ds.data import PackedShards
    from r1_ds.evaluation.perplexity import heldout_loss

    ds = PackedShards(os.path.join(args.data, "heldout"))
    rows = min(args.final_sequences or len(ds), len(ds))
    rows = max(args.micro_batch, rows // args.micro_batch * args.micro_batch)  # whole batches: no new shape to compile
    return heldout_loss(model, ds, seq_len=seq_len, batch_size=args.micro_batch, max_sequences=min(rows, len(ds)))


def run_model(name: str, cfg, args, *, vocab: int, seq_len: int, tokens_per_step: int) -> dict:
    """Train one model, evaluate it on the whole held-out split, export it; its row of the results."""
    t0 = time.perf_counter()
    if name == "r1":
        engine, curve = train_r1(cfg)
    else:
        torch.manual_seed(cfg.seed)  # as train() seeds R1's initial weights
        engine, curve = train_dense(cfg, llama_model(args.preset, vocab, seq_len))
    train_s = time.perf_counter() - t0
    module = engine.module
    final = final_heldout(module, args, seq_len)
    steps = cfg.schedule.steps
    row = {
        "params_m": sum(p.numel() for p in module.parameters()) / 1e6,
        "tokens": steps * tokens_per_step,
        "steps": steps,
        "train_s": train_s,
        "final": final,
        "curve": [{**p, "tokens": p["step"] * tokens_per_step} for p in curve],
    }
    print(
        f"{name}: final held-out loss {final['loss']:.4f} over {final['tokens']} tokens ({train_s:.0f} s)", flush=True
    )
    if name == "llama" and args.export_llama:
        module.save_pretrained(args.export_llama)
        row["export"] = os.path.abspath(args.export_llama)
    engine = module = None
    gc.collect()
    if name == "r1" and args.export_r1:
        from r1_ds.checkpoint import export_hf

        export_hf(os.path.join(cfg.output_dir, "checkpoints"), args.export_r1)
        row["export"] = os.path.abspath(args.export_r1)
    return row


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def corpus_summary(data: str) -> dict | None:
    path = os.path.join(data, "corpus.json")
    return read_json(path)["pack"] if os.path.isfile(path) else None


def plot(rows: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in rows.items():
        if "error" in r:
            continue
        ax.plot(
            [p["tokens"] / 1e6 for p in r["curve"]],
            [p["heldout_loss"] for p in r["curve"]],
            marker="o",
            markersize=3,
            label=f"{name} ({r['params_m']:.1f}M params)",
        )
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("held-out loss (cross entropy, nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: dict) -> str:
    head = (
        f"{'model':>6} {'params M':>9} {'tokens M':>9} {'train s':>8} {'tokens/s':>10} {'held-out loss':>14} {'ppl':>8}"
    )
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"{name:>6}  failed: {r['error']}")
            continue
        lines.append(
            f"{name:>6} {r['params_m']:>9.1f} {r['tokens'] / 1e6:>9.2f} {r['train_s']:>8.0f} "
            f"{r['tokens'] / r['train_s']:>10,.0f} {r['final']['loss']:>14.4f} {r['final']['perplexity']:>8.2f}"
        )
    if all(n in rows and "error" not in rows[n] for n in ("r1", "llama")):
        a, b = rows["r1"]["final"]["loss"], rows["llama"]["final"]["loss"]
        lines.append(f"R1 - Llama held-out loss: {a - b:+.4f} ({(a - b) / b:+.2%} of Llama's; goal: <= +1%)")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from r1_ds.data import PackedShards

    train_ds = PackedShards(os.path.join(args.data, "train"))
    seq_len = args.seq_len or train_ds.seq_len
    vocab = -(-train_ds.vocab_size // 64) * 64
    tokens_per_step = args.global_batch * seq_len
    steps = max(2, int(args.token_budget // tokens_per_step))
    eval_every = args.eval_every or max(1, steps // 16)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    card = torch.cuda.get_device_name().split()[-1].lower() if torch.cuda.is_available() else "cpu"
    json_path = args.json or os.path.join(ROOT, "benchmarks", "results", f"quality_{card}.json")
    png_path = args.png or os.path.splitext(json_path)[0] + ".png"
    print(
        f"quality: {args.preset}, {steps} steps x {tokens_per_step} tokens = {steps * tokens_per_step / 1e6:.1f}M "
        f"tokens per model, held-out every {eval_every} steps, vocab {vocab}, seq {seq_len}",
        flush=True,
    )
    rows = {}
    result = {
        "benchmark": "quality",
        **provenance(__file__, argv),
        "preset": args.preset,
        "seq_len": seq_len,
        "vocab_size": vocab,
        "global_batch": args.global_batch,
        "micro_batch": args.micro_batch,
        "lr": args.lr,
        "warmup_frac": args.warmup_frac,
        "seed": args.seed,
        "eval_sequences": args.eval_sequences,
        "deepspeed_config": read_json(args.deepspeed_config),
        "corpus": corpus_summary(args.data),
        "models": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    for name in args.models:
        cfg = train_config(args, name, vocab, seq_len, steps, eval_every)
        try:  # one model failing (its traceback is printed) still leaves the other's figures
            rows[name] = run_model(name, cfg, args, vocab=vocab, seq_len=seq_len, tokens_per_step=tokens_per_step)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            rows[name] = {"error": f"{type(err).__name__}: {err}"}
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        with open(json_path, "w") as f:  # after every model: a run cut short keeps the finished ones
            json.dump(result, f, indent=2)
    plot(rows, png_path, f"held-out loss, {args.preset}, seq {seq_len}, {result['card']}")
    print()
    print(table(rows))
    print(f"\nwrote {json_path} and {png_path}")
    return 1 if any("error" in r for r in rows.values()) else 0


if __name__ == "__main__":
    from r1_ds.distributed import exit_process

    exit_process(main())
