"""Does compressed gradient reduction train as well as dense? A tiny LM on CPU, gloo ranks, same data and seeds.

    .venv/bin/python benchmarks/compression_convergence.py                 # 2 ranks, 300 steps, ~2 min on 2 cores
    .venv/bin/python benchmarks/compression_convergence.py --world 4 --steps 400

Trains the same tiny causal transformer on a synthetic first-order Markov language, once with DeepSpeed's dense
all-reduce and once per compression mode ("r1_compression": top-k 5% + int8 + error feedback). Writes the loss
curves to benchmarks/results/compression_convergence_w<world>.json and .png, and prints a table last: final
held-out loss of each run and its gap to dense (the goal is within 2%). The model, data and training run live
in benchmarks/tiny_lm.py (tests/test_comm_hook.py trains the same model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.tiny_lm import SEQ, compression_section, train_tiny_lm  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    from r1_ds.local_ranks import run_distributed

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2, help="gloo ranks (data parallel)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=20, help="r1_compression.warmup_steps (dense steps first)")
    ap.add_argument("--modes", default="leader,allgather", help="compression modes to compare with dense")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="folder for JSON + PNG")
    args = ap.parse_args(argv)

    runs = {"dense": None}
    runs.update({m: compression_section(m, args.warmup) for m in args.modes.split(",") if m})
    results = {}
    for name, section in runs.items():
        t0 = time.time()
        per_rank = run_distributed(train_tiny_lm, args.world, section, steps=args.steps, timeout=3600)
        curve = [sum(r["losses"][s] for r in per_rank) / args.world for s in range(args.steps)]
        evals = {r["eval_loss"] for r in per_rank}
        assert len(evals) == 1, f"{name}: replicas disagree on the held-out loss {evals}"
        floor = per_rank[0]["entropy_floor"]  # the same data (and floor) for every run
        results[name] = {
            "config": section,
            "train_loss": curve,
            "eval_loss": per_rank[0]["eval_loss"],
            "mean_ratio": per_rank[0]["mean_ratio_compressed_steps"],
            "wall_s": time.time() - t0,
            "last_stats": per_rank[0]["stats"],
        }
        print(f"{name}: held-out loss {results[name]['eval_loss']:.4f} ({time.time() - t0:.0f} s)", flush=True)

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"compression_convergence_w{args.world}")
    meta = {
        "world": args.world,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "model": "TinyLM dim 64, 2 layers",
        "optimizer": "AdamW lr 3e-3, clip 1.0",
        "micro_batch": 16,
        "seq": SEQ,
        "entropy_floor": floor,
        "torch": torch.__version__,
    }
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "runs": results}, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, r in results.items():
            k = 10  # moving average, the raw per-step loss is noisy
            y = r["train_loss"]
            smooth = [sum(y[max(0, i - k + 1) : i + 1]) / len(y[max(0, i - k + 1) : i + 1]) for i in range(len(y))]
            ax.plot(smooth, label=f"{name} (held-out {r['eval_loss']:.3f})")
        ax.axhline(floor, color="grey", ls=":", label=f"entropy floor {floor:.3f}")
        ax.axvline(args.warmup, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (10-step mean over ranks)")
        ax.set_title(f"top-5% + int8 + error feedback vs dense, {args.world} gloo ranks")
        ax.legend()
        fig.tight_layout()
        fig.savefig(stem + ".png", dpi=120)
    except ImportError:
        print("matplotlib missing: no PNG written")

    dense = results["dense"]["eval_loss"]
    print("\n| run | held-out loss | vs dense | bytes ratio (dense/sent) |\n|---|---|---|---|")
    for name, r in results.items():
        gap = (r["eval_loss"] - dense) / dense * 100
        ratio = "1" if name == "dense" else f"{r['mean_ratio']:.1f}x"
        print(f"| {name} | {r['eval_loss']:.4f} | {gap:+.2f}% | {ratio} |")
    print(f"(entropy floor {floor:.4f}; {args.world} ranks, {args.steps} steps, compression after {args.warmup})")
    if not math.isfinite(dense):
        raise SystemExit("dense run diverged")


if __name__ == "__main__":
    main()
