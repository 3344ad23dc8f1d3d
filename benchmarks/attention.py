"""Hierarchical attention against dense causal SDPA: forward+backward time and peak memory.

    python benchmarks/attention.py --device cuda                      # H200: 1k .. 64k tokens (and more)
    python benchmarks/attention.py --device cpu --lengths 1024 2048   # CPU, small sizes

Both sides get the same projected q, k, v (B, T, d) and include their rotary embeddings (compiled on
GPU on both sides, from precomputed cos / sin tables); dense is
`scaled_dot_product_attention(is_causal=True)` with d / dense_heads head size, timed on every
backend that runs (cuDNN, flash, memory-efficient) and the best one kept. R1 runs the path the
trainer uses on that device: the FlexAttention fast path on CUDA, the eager reference on CPU (no
block-sparse kernel there). With --compile (CUDA), each side runs as one torch.compile'd graph, as it does
inside a decoder block under `model.compile`. Prints a table last and writes JSON to --json (default:
$OUT/attention_<device>.json, attention_<device>_compiled.json with --compile).
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks.* and r1_ds
from benchmarks import inductor_config  # noqa: E402
from benchmarks.host import machine  # noqa: E402
from r1_ds.flops import visible_keys  # noqa: E402
from r1_ds.model.hierarchical_attention import (  # noqa: E402
    L1_CUDA_KERNEL,
    L1_CUDA_KERNELS,
    compiled_on_cuda,
    hierarchical_attention_eager,
    hierarchical_attention_flex,
    raise_recompile_limit,
    rope_table,
    rotary,
    set_l1_cuda_kernel,
    split_heads,
)


@compiled_on_cuda
def dense_inputs(q, k, v, cos, sin, heads: int):
    """Dense side's rotary (per head of d / heads), compiled on GPU like R1's glue."""
    return split_heads(rotary(q, cos, sin), heads), split_heads(rotary(k, cos, sin), heads), split_heads(v, heads)


def attention_flops(T: int, *, d: int, window: int, paragraph: int, document: int, top_k: int) -> tuple[float, float]:
    """Forward FLOPs of the attention core (QK^T and PV: 4 * d per visible key) summed over T
    queries, dense causal vs R1, from the formulas in docs/architecture.md (routing included)."""
    dense = 4 * d * (T * (T + 1) // 2)  # query t sees t + 1 keys
    keys = visible_keys(T, window=window, paragraph_size=paragraph, document_size=document, top_k=top_k)
    n_par = T // paragraph
    routing = 2 * d * n_par * n_par / 2  # qbar . kbar over candidate paragraphs, all heads together
    return float(dense), 4 * d * keys + routing


def time_fn(fn, device: str, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_mem(fn, device: str) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--dim", type=int, default=None, help="width d (default 2048 on cuda = 1.3B preset, 512 on cpu)")
    p.add_argument("--level-heads", type=int, nargs=3, default=None)
    p.add_argument("--dense-heads", type=int, default=None, help="dense SDPA heads (default d / 128)")
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--paragraph", type=int, default=128)
    p.add_argument("--document", type=int, default=1024)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--tokens", type=int, default=None, help="tokens per step: batch = max(1, tokens // T)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--compile", action="store_true", help="each side as one compiled graph (CUDA)")
    p.add_argument("--l1-kernel", choices=L1_CUDA_KERNELS, default=L1_CUDA_KERNEL, help="R1's L1 kernel on CUDA")
    p.add_argument("--inductor", action="append", metavar="KEY=VALUE", help="a torch._inductor.config setting")
    args = p.parse_args()
    set_l1_cuda_kernel(args.l1_kernel)
    inductor = inductor_config.apply(args.inductor)

    dev = args.device
    cuda = dev == "cuda"
    d = args.dim or (2048 if cuda else 512)
    level_heads = tuple(args.level_heads or ((8, 16, 32) if cuda else (4, 8, 16)))
    dense_heads = args.dense_heads or d // 128
    lengths = args.lengths or ([1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072] if cuda else [1024, 2048, 4096])
    tokens = args.tokens or (65536 if cuda else 4096)
    repeats = args.repeats or (10 if cuda else 3)
    dtype = torch.bfloat16 if cuda else torch.float32
    kw = dict(
        level_heads=level_heads,
        window=args.window,
        paragraph_size=args.paragraph,
        document_size=args.document,
        top_k=args.top_k,
        rope_theta=10000.0,
    )

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = (
        [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        if cuda
        else [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    )
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "host": machine(),
        "torch": torch.__version__,
        "dtype": str(dtype),
        "d": d,
        "level_heads": level_heads,
        "dense_heads": dense_heads,
        "window": args.window,
        "paragraph": args.paragraph,
        "document": args.document,
        "top_k": args.top_k,
        "tokens_per_step": tokens,
        "command": "python benchmarks/attention.py " + " ".join(sys.argv[1:]),
        "compile": args.compile,
        "l1_kernel": args.l1_kernel,
        "inductor": inductor,
    }
    suffix = "_compiled" if args.compile else ""
    out = args.json or os.path.join(os.environ.get("OUT", "benchmarks/results"), f"attention_{dev}{suffix}.json")

    def dense_attention(q, k, v, cos, sin, heads, backend):
        with sdpa_kernel([backend]):  # inside: a compiled graph is traced once per backend
            return F.scaled_dot_product_attention(*dense_inputs(q, k, v, cos, sin, heads), is_causal=True)

    r1_flex = hierarchical_attention_flex
    if args.compile:
        raise_recompile_limit()  # a graph per length
        r1_flex = torch.compile(hierarchical_attention_flex, fullgraph=True, dynamic=False)
        dense_attention = torch.compile(dense_attention, fullgraph=True, dynamic=False)

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)

    def save():  # after every row, so a run cut short still leaves its figures
        with open(out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)

    rows = []
    for T in lengths:
        B = max(1, tokens // T)
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, T, d, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
        grad = torch.randn(B, T, d, device=dev, dtype=dtype)
        pos = torch.arange(T, device=dev)
        cos, sin = rope_table(pos, d // dense_heads, 10000.0)
        row = {"T": T, "batch": B}

        def dense_step(backend):
            def step():
                o = dense_attention(q, k, v, cos, sin, dense_heads, backend)
                o.transpose(1, 2).reshape(B, T, d).backward(grad)

            return step

        best = None
        for backend in backends:
            try:
                s = time_fn(dense_step(backend), dev, repeats)
            except (RuntimeError, torch.OutOfMemoryError) as err:  # backend unsupported for this shape
                row[f"dense_{backend.name.lower()}_error"] = str(err).splitlines()[0][:120]
                continue
            row[f"dense_{backend.name.lower()}_ms"] = s * 1e3
            if best is None or s < best[0]:
                best = (s, backend)
        if best is not None:
            row["dense_ms"], row["dense_backend"] = best[0] * 1e3, best[1].name
            row["dense_peak_gib"] = peak_mem(dense_step(best[1]), dev)

        def r1_step():
            if cuda:
                h = r1_flex(q, k, v, **kw)
            else:
                h = hierarchical_attention_eager(q, k, v, q, pos, **kw)
            torch.autograd.backward(h, (grad, grad, grad))

        try:
            row["r1_ms"] = time_fn(r1_step, dev, repeats) * 1e3
            row["r1_peak_gib"] = peak_mem(r1_step, dev)
        except torch.OutOfMemoryError as err:
            row["r1_error"] = str(err).splitlines()[0][:120]
        dense_f, r1_f = attention_flops(
            T, d=d, window=args.window, paragraph=args.paragraph, document=args.document, top_k=args.top_k
        )
        row["dense_fwd_gflop"], row["r1_fwd_gflop"] = B * dense_f / 1e9, B * r1_f / 1e9
        if "dense_ms" in row and "r1_ms" in row:
            row["speedup"] = row["dense_ms"] / row["r1_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        save()
        q = k = v = grad = None  # free this length's tensors before the next (the closures above are done)
        if cuda:
            torch.cuda.empty_cache()

    def fmt(x, f):
        return format(x, f) if isinstance(x, (int, float)) else "-"

    print(f"\nHierarchical attention vs dense causal SDPA, fwd+bwd, {meta['device']}, {dtype}, d={d}")
    print(
        f"{'T':>7} {'B':>3} {'dense ms':>9} {'backend':>18} {'R1 ms':>8} {'speedup':>8} "
        f"{'dense GiB':>9} {'R1 GiB':>7} {'FLOP ratio':>10}"
    )
    for r in sorted(rows, key=lambda r: r["T"]):
        print(
            f"{r['T']:>7} {r['batch']:>3} {fmt(r.get('dense_ms'), '9.2f')} {r.get('dense_backend', '-'):>18} "
            f"{fmt(r.get('r1_ms'), '8.2f')} {fmt(r.get('speedup'), '8.2f')} {fmt(r.get('dense_peak_gib'), '9.2f')} "
            f"{fmt(r.get('r1_peak_gib'), '7.2f')} {r['dense_fwd_gflop'] / r['r1_fwd_gflop']:>10.1f}"
        )


if __name__ == "__main__":
    main()
