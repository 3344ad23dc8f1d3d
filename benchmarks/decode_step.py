"""Milliseconds per decoding step (one new token per row, with the KV cache), R1 against a Hugging Face
LlamaForCausalLM of the same width, depth and MLP (SDPA), at several context lengths and batch sizes.

    python benchmarks/decode_step.py --device cpu --preset tiny 125m --context 256 1024 4096 --batch 1 10
    python benchmarks/decode_step.py --device cuda --preset 125m --context 256 1024 4096 32768 --batch 1 10

The cache is filled with random keys, values (and, for R1, queries) of the context length instead of a prefill
forward: a step's time does not depend on what the cache holds, and a dense prefill of 4k tokens times 10 rows
would not fit a small machine. Each step passes the attention mask of every token so far, as `generate()` does;
--padded starts every row but the first with a different number of pads (left padding, as batched prompts of
different lengths are), which R1 computes row by row. Both models random-init, fp32 on CPU and bf16 on GPU,
R1 with attn_implementation --r1-attn (default: flex_attention, whose decoding step is compiled on GPU). Prints a
table and writes JSON to --json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.generation import _sync, build  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", nargs="+", default=["tiny"], help="R1 size presets; Llama gets the same sizes")
    p.add_argument("--context", type=int, nargs="+", default=[256, 1024], help="tokens in the cache")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="rows decoded together")
    p.add_argument("--steps", type=int, default=8, help="timed steps per row of the table (the median is kept)")
    p.add_argument("--models", nargs="+", default=["r1", "llama"], choices=["r1", "llama"])
    p.add_argument("--r1-attn", default="flex_attention", choices=["eager", "flex_attention"])
    p.add_argument("--padded", action="store_true", help="left-pad the rows to different lengths")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", default=None, help="where to write the results")
    args = p.parse_args(argv)
    if min(args.context) < 1 or min(args.batch) < 1 or args.steps < 1:
        p.error("--context, --batch and --steps take positive numbers")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu")
    return args


def filled_cache(model, name: str, batch: int, context: int):
    """A DynamicCache of `context` random positions per layer, shaped as the model's own forward fills it."""
    from transformers.cache_utils import DynamicCache

    c = model.config
    dev, dtype = model.device, model.dtype
    cache = DynamicCache(config=c)
    for i in range(c.num_hidden_layers):
        if name == "r1":  # [k | q] as keys, v as values, one head axis (R1HierarchicalAttention.levels)
            keys = torch.randn(batch, 1, context, 2 * c.hidden_size, device=dev, dtype=dtype)
            values = torch.randn(batch, 1, context, c.hidden_size, device=dev, dtype=dtype)
        else:
            shape = (batch, c.num_key_value_heads, context, c.hidden_size // c.num_attention_heads)
            keys, values = torch.randn(shape, device=dev, dtype=dtype), torch.randn(shape, device=dev, dtype=dtype)
        cache.update(keys, values, i)
    return cache


@torch.no_grad()
def time_steps(model, name: str, batch: int, context: int, steps: int, padded: bool, device: str) -> float:
    """Median milliseconds of one decoding step over `steps` steps after two warm-up steps."""
    cache = filled_cache(model, name, batch, context)
    mask = torch.ones(batch, context, dtype=torch.long, device=device)
    if padded:  # row i starts with i pads (at most half the context)
        for i in range(batch):
            mask[i, : min(i, context // 2)] = 0
    tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
    times = []
    for step in range(steps + 2):
        mask = torch.cat([mask, mask.new_ones(batch, 1)], 1)
        _sync(device)
        t = time.perf_counter()
        out = model(input_ids=tok, attention_mask=mask, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        _sync(device)
        if step >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def table(rows: list[dict]) -> str:
    lines = [f"{'preset':<6} {'model':<6} {'context':>8} {'batch':>5} {'ms/step':>9} {'vs llama':>9}"]
    llama = {(r["preset"], r["context"], r["batch"]): r["ms_per_step"] for r in rows if r["model"] == "llama"}
    for r in rows:
        ref = llama.get((r["preset"], r["context"], r["batch"]))
        ratio = f"{r['ms_per_step'] / ref:.2f}x" if ref and r["model"] != "llama" else ""
        lines.append(
            f"{r['preset']:<6} {r['model']:<6} {r['context']:>8} {r['batch']:>5} {r['ms_per_step']:>9.2f} {ratio:>9}"
        )
    return "\n".join(lines)


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    for preset in args.preset:
        for name in args.models:
            model = build(name, preset, max(args.context), args.steps + 2, args.device)
            if name == "r1":
                model.set_attn_implementation(args.r1_attn)
            for context in args.context:
                for batch in args.batch:
                    ms = time_steps(model, name, batch, context, args.steps, args.padded, args.device)
                    rows.append(
                        {
                            "preset": preset,
                            "model": name,
                            "context": context,
                            "batch": batch,
                            "ms_per_step": round(ms, 3),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
            del model
    result = {
        "benchmark": "decode_step",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": _commit(),
        "command": " ".join(["python", "benchmarks/decode_step.py", *(sys.argv[1:] if argv is None else argv)]),
        "r1_attn": args.r1_attn,
        "padded": args.padded,
        "rows": rows,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
