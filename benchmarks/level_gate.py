"""Microseconds per forward + backward of the level gate and the gated sum alone (alpha = sigmoid(W_g [h1; h2; h3]
+ b_g); h1 + sum_i alpha_i h_i), at a training step's shape, in the ways the gate can be written:

    python benchmarks/level_gate.py --device cuda --tokens 16384 --hidden 2048 --json /tmp/level_gate.json

- reduction: the logits as three fp32 dot products per token and level, the model's own form on CUDA
  (modeling_r1.level_gate_logits);
- matmul8: the logits as one GEMM per level against the gate's 8-row weight (rows 3..7 zero), sliced to 3;
- each compiled together with the gated sum, as inside a compiled decoder block, and eager.

The compiled block fuses the gate with its neighbours, so these figures bound what a change of form can save; a
training run decides. Prints a table and writes JSON to --json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


from r1_ds.model.modeling_r1 import gated_sum, level_gate_logits  # noqa: E402

# the model's own functions, unwrapped from compiled_on_cuda: each variant below is compiled whole or left eager
_model_logits, _model_gated_sum = level_gate_logits.__wrapped__, gated_sum.__wrapped__


def reduction_logits(h1, h2, h3, weight, bias):
    return _model_logits(h1, h2, h3, weight[:3], bias[:3])


def matmul8_logits(h1, h2, h3, weight, bias):
    d = h1.shape[-1]
    out = F.linear(h1, weight[:, :d], bias) + F.linear(h2, weight[:, d : 2 * d]) + F.linear(h3, weight[:, 2 * d :])
    return out[..., :3].float()


def gated(logits_fn):
    def fuse(h1, h2, h3, weight, bias):
        return _model_gated_sum(h1, h2, h3, logits_fn(h1, h2, h3, weight, bias))[0]

    return fuse


VARIANTS = {"reduction": gated(reduction_logits), "matmul8": gated(matmul8_logits)}


def inputs(tokens: int, hidden: int, device: str, dtype):
    g = torch.Generator().manual_seed(0)
    h = [torch.randn(tokens, hidden, generator=g).to(device, dtype).requires_grad_() for _ in range(3)]
    weight = (torch.randn(8, 3 * hidden, generator=g) / (3 * hidden) ** 0.5).to(device, dtype)
    weight[3:] = 0
    bias = torch.zeros(8, device=device, dtype=dtype)
    return h, weight.requires_grad_(), bias.requires_grad_()


def step(fn, h, weight, bias, grad):
    out = fn(*h, weight, bias)
    torch.autograd.backward(out, grad)
    return out


def time_us(fn, args, repeats: int, device: str) -> float:
    """Median microseconds of one step: CUDA events on the GPU (kernel time, no host gaps), else the wall clock."""
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(fn, *args)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        else:
            t0 = time.perf_counter()
            step(fn, *args)
            times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=16384, help="batch x sequence length (1.3B at 2k: 8 x 2048)")
    p.add_argument("--hidden", type=int, default=2048, help="hidden size (1.3B: 2048)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    h, weight, bias = inputs(args.tokens, args.hidden, args.device, dtype)
    grad = torch.randn_like(h[0])
    ref = None
    rows = []
    print(f"{'variant':>10} {'mode':>9} {'us':>10}   error against the first row", flush=True)
    for name, fn in VARIANTS.items():
        for compiled in (False, True):
            f = torch.compile(fn, dynamic=False) if compiled else fn
            for x in (*h, weight, bias):
                x.grad = None
            out = step(f, h, weight, bias, grad)  # warm-up (and compile)
            got = [out.float().clone(), *(x.grad.float().clone() for x in (*h, weight))]
            if ref is None:
                ref = got
            err = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item() for a, b in zip(got, ref))
            us = time_us(f, (h, weight, bias, grad), args.repeats, args.device)
            rows.append({"variant": name, "compiled": compiled, "us": us, "max_rel_err_vs_first": err})
            print(f"{name:>10} {'compiled' if compiled else 'eager':>9} {us:10.1f} us   rel err {err:.2e}", flush=True)
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "command": " ".join(["python", "benchmarks/level_gate.py", *(argv or sys.argv[1:])]),
        "tokens": args.tokens,
        "hidden": args.hidden,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
