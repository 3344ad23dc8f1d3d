"""`r1-ds plot RUN`: the loss curve of a run (its metrics.jsonl) as a PNG.

r1-ds plot runs/tiny                    # -> runs/tiny/loss.png
r1-ds plot runs/a runs/b -o cmp.png     # several runs on one plot
"""

from __future__ import annotations

import argparse
import logging
import os

from .extras import MissingExtra, require
from .metrics import read_metrics

log = logging.getLogger("r1_ds.plot")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders (holding metrics.jsonl) or metrics.jsonl files")
    p.add_argument("-o", "--out", help="PNG path (default: <first run>/loss.png)")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window in steps (default: 1 = raw)")


def _metrics_path(run: str) -> str:
    path = run if run.endswith(".jsonl") else os.path.join(run, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: pass a run folder written by `r1-ds train` (it holds metrics.jsonl)"
        )
    return path


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss(runs: list[str], out: str, window: int = 1) -> str:
    matplotlib = require("matplotlib", extra="plot", purpose="r1-ds plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        recs = [r for r in read_metrics(_metrics_path(run)) if r.get("loss") is not None]
        steps = [r["step"] for r in recs]
        ax.plot(steps, smooth([r["loss"] for r in recs], window), label=os.path.basename(os.path.normpath(run)))
        starts = [r["step"] for prev, r in zip(recs, recs[1:]) if r.get("stage") != prev.get("stage")]
        for s in starts:  # progressive stage boundaries
            ax.axvline(s, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss" + (f" (mean of {window})" if window > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def run(args: argparse.Namespace) -> int:
    out = args.out or os.path.join(
        args.runs[0] if not args.runs[0].endswith(".jsonl") else os.path.dirname(args.runs[0]), "loss.png"
    )
    try:
        plot_loss(args.runs, out, args.smooth)
    except (FileNotFoundError, MissingExtra) as err:
        log.error("%s", err)
        return 2
    except OSError as err:  # e.g. a read-only output folder
        log.error("cannot write %s: %s. Fix: pass -o with a writable path.", out, err)
        return 2
    log.info("wrote %s", out)
    return 0
