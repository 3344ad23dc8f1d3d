"""The figures of one alignment run (`r1-ds train` with align.objective=align): pairs/s, first and last loss of
each modality pair, and held-out R@1 against chance, as a table and a JSON for benchmarks/results/align_*.json.

    python benchmarks/align_summary.py RUN_DIR --json OUT/align_350m.json --command "the train command"

pairs/s is rows (triples) per second of the optimizer steps, eval excluded; the first logged interval (start-up,
first kernels) is left out of the steady figure and reported on its own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PAIRS = ("image-text", "image-code", "text-code")
DIRECTIONS = ("image->text", "text->image", "image->code", "code->image", "text->code", "code->text")


def summarize(records: list[dict]) -> dict:
    """Throughput, per-pair loss / temperature / weight, and held-out retrieval of a run's metrics records."""
    rates = [r["pairs_per_s"] for r in records]
    steady = rates[1:] or rates
    pairs = {}
    for name in PAIRS:
        seen = [r for r in records if r.get(f"align/{name}/loss") is not None]
        if seen:
            pairs[name] = {
                "first_loss": seen[0][f"align/{name}/loss"],
                "first_step": seen[0]["step"],
                "last_loss": seen[-1][f"align/{name}/loss"],
                "last_step": seen[-1]["step"],
                "temperature": seen[-1][f"align/{name}/temperature"],
                "weight": seen[-1][f"align/{name}/weight"],
                "mine": seen[-1][f"align/{name}/mine"],
            }
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    retrieval = {}
    for d in DIRECTIONS:
        seen = [r for r in evals if f"eval/{d}/R@1" in r]
        if seen:
            retrieval[d] = {
                "steps": [r["step"] for r in seen],
                "R@1": [r[f"eval/{d}/R@1"] for r in seen],
                "R@5": seen[-1][f"eval/{d}/R@5"],
                "chance@1": seen[-1][f"eval/{d}/chance@1"],
                "n": seen[-1][f"eval/{d}/n"],
            }
    return {
        "steps": records[-1]["step"],
        "elapsed_s": records[-1]["elapsed_s"],
        "pairs_per_s": statistics.median(steady),
        "pairs_per_s_first_interval": rates[0],
        "peak_mem_gib": max((r.get("peak_mem_gib") or 0) for r in records),
        "loss": {"first": records[0]["loss"], "last": records[-1]["loss"]},
        "pairs": pairs,
        "retrieval": retrieval,
    }


def table(s: dict) -> str:
    lines = [
        f"steps {s['steps']} in {s['elapsed_s']:.1f} s; pairs/s {s['pairs_per_s']:.1f} (median after the first "
        f"interval; first interval {s['pairs_per_s_first_interval']:.1f}); peak memory {s['peak_mem_gib']:.2f} GiB",
        f"objective loss {s['loss']['first']:.4f} -> {s['loss']['last']:.4f}",
        "",
        f"{'pair':<12} {'first loss':>11} {'last loss':>10} {'temperature':>12} {'weight':>7}",
    ]
    for name, p in s["pairs"].items():
        lines.append(
            f"{name:<12} {p['first_loss']:>11.4f} {p['last_loss']:>10.4f} {p['temperature']:>12.4f} {p['weight']:>7.3f}"
        )
    lines += ["", f"{'held-out':<13} {'R@1 first':>9} {'R@1 last':>9} {'R@5 last':>9} {'chance@1':>9} {'rows':>5}"]
    for d, r in s["retrieval"].items():
        lines.append(
            f"{d:<13} {r['R@1'][0]:>9.3f} {r['R@1'][-1]:>9.3f} {r['R@5']:>9.3f} {r['chance@1']:>9.3f} {r['n']:>5}"
        )
    return "\n".join(lines)


def provenance(command: str | None) -> dict:
    import torch

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except OSError:
        commit = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "benchmark": "align",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": device,
        "torch": torch.__version__,
        "commit": commit,
        "command": command,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="output folder of the alignment run")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--command", help="the training command, recorded in the JSON")
    args = p.parse_args()
    from r1_ds.metrics import read_metrics

    records = read_metrics(os.path.join(args.run, "metrics.jsonl"))
    if not records:
        print(f"{args.run}/metrics.jsonl has no records: the run logged nothing", file=sys.stderr)
        return 1
    s = summarize(records)
    settings = {}
    for name in ("train_config.json", "ds_config.json", "align_data.json"):
        path = os.path.join(args.run, name)
        if os.path.isfile(path):
            with open(path) as f:
                settings[name.removesuffix(".json")] = json.load(f)
    print(table(s))
    if args.json:
        from data_prep.atomic import atomic_write_json

        atomic_write_json(args.json, {**provenance(args.command), **s, **settings, "records": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
