"""MINE (and SMILE) against the true mutual information of correlated Gaussians, for growing d and MI.

    python benchmarks/mine.py --out benchmarks/results/mine_cpu.json

x, y in R^d with y = rho x + sqrt(1 - rho^2) eps per coordinate: true MI = -d/2 log(1 - rho^2) nats. Each case
trains a fresh critic (r1_ds.align.MineEstimator, concat MLP, batch 256, Adam) for --steps steps on fresh samples,
then reads the bound on 20,000 held-out samples. Prints a table and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1_ds.align.mine import MineEstimator, correlated_gaussians, rho_for_mi  # noqa: E402


def run_case(d: int, mi: float, variant: str, *, steps: int, batch: int, seed: int) -> dict:
    rho = rho_for_mi(d, mi)
    gen = torch.Generator().manual_seed(seed * 1000 + d * 10 + int(mi))
    est = MineEstimator(d, d, hidden=128, lr=1e-3, variant=variant, seed=seed)
    t = time.perf_counter()
    for _ in range(steps):
        est.update(*correlated_gaussians(batch, d, rho, generator=gen))
    value = est.estimate(*correlated_gaussians(20_000, d, rho, generator=gen))
    return {
        "d": d,
        "true_mi": mi,
        "variant": variant,
        "seed": seed,
        "estimate": value,
        "rel_error": (value - mi) / mi,
        "seconds": time.perf_counter() - t,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 5, 10, 20])
    p.add_argument("--mis", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--variants", nargs="+", default=["mine", "smile"])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON file for the rows")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print(f"{'d':>3} {'true MI':>8} " + " ".join(f"{v:>16}" for v in args.variants))
    for d in args.dims:
        for mi in args.mis:
            cells = []
            for variant in args.variants:
                row = run_case(d, mi, variant, steps=args.steps, batch=args.batch, seed=args.seed)
                rows.append(row)
                cells.append(f"{row['estimate']:7.3f} ({100 * row['rel_error']:+5.1f}%)")
            print(f"{d:>3} {mi:>8.1f} " + " ".join(f"{c:>16}" for c in cells), flush=True)
    if args.out:
        from data_prep.atomic import atomic_write_json

        atomic_write_json(
            args.out,
            {
                "command": " ".join(["python", "benchmarks/mine.py", *(argv or sys.argv[1:])]),
                "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                f"{os.cpu_count()} CPUs, torch {torch.__version__}",
                "date": time.strftime("%Y-%m-%d"),
                "steps": args.steps,
                "batch": args.batch,
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
