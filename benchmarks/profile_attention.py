"""Where hierarchical attention's time goes on CUDA: each part timed alone (fwd+bwd), wall time
against GPU time, and the costliest kernels of one whole step. A tuning aid, not a benchmark.

    python benchmarks/profile_attention.py --T 8192 --batch 8
"""

import argparse
import functools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # r1_ds without an install
from r1_ds.model import hierarchical_attention as ha  # noqa: E402
from r1_ds.model import window_attention_triton as wat  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--T", type=int, default=8192)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--dim", type=int, default=2048)
p.add_argument("--level-heads", type=int, nargs=3, default=(8, 16, 32))
p.add_argument("--rows", type=int, default=30)
args = p.parse_args()
kw = dict(
    level_heads=tuple(args.level_heads), window=128, paragraph_size=128, document_size=1024, top_k=4, rope_theta=10000.0
)
B, T, d = args.batch, args.T, args.dim
H1, H2, H3 = args.level_heads
q, k, v = (torch.randn(B, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
g = torch.randn_like(q)


def timed(name, fn, n=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    s.record()
    for _ in range(n):
        fn()
    e.record()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / n * 1e3
    print(f"{name:<48} {s.elapsed_time(e) / n:8.2f} ms gpu {wall:8.2f} ms wall", flush=True)


def whole():
    torch.autograd.backward(ha.hierarchical_attention_flex(q, k, v, **kw), (g, g, g))


def leaf(*xs):
    return [x.detach().requires_grad_(True) for x in xs]


timed(f"whole step fwd+bwd (L1: {ha.L1_CUDA_KERNEL})", whole)
timed("whole step fwd only", lambda: ha.hierarchical_attention_flex(q, k, v, **kw))

# the shared glue, then each level's kernel on ready inputs
g_, G_ = kw["paragraph_size"], kw["document_size"]
n_par = T // g_
glue_kw = {key: kw[key] for key in ("level_heads", "paragraph_size", "document_size", "rope_theta")}
*outs, S = ha.flex_operands(q, k, v, **glue_kw)
timed(
    "glue (rotary, summaries, key layout) fwd+bwd",
    lambda: torch.autograd.backward(ha.flex_operands(q, k, v, **glue_kw)[:7], [torch.ones_like(o) for o in outs]),
)
qr, kr, vp, kbuf, vbuf, k3, v3 = leaf(*outs)
m1 = ha._window_block_mask(T, kw["window"], g_, "cuda")
l1_in = leaf(ha.split_heads(qr, H1), ha.split_heads(kr, H1), ha.split_heads(vp, H1))
o1g = torch.randn(B, H1, T, d // H1, device="cuda", dtype=torch.bfloat16)
l1_ops = leaf(qr, kr, vp)
timed(
    f"L1 banded kernel fwd+bwd (hd {d // H1})",
    lambda: ha._window_attention_banded_compiled(*l1_ops, H1, kw["window"], g_).backward(o1g),
)
timed(f"L1 flex kernel fwd+bwd (hd {d // H1})", lambda: ha._flex(*l1_in, m1, (d // H1) ** -0.5).backward(o1g))
# the Triton kernels read and write the (B, T, d) layout (no merge_heads after it); a tile config that does
# not compile on this GPU (shared memory, registers) prints its error and the profile goes on
if wat.available():
    o1m = torch.randn(B, T, d, device="cuda", dtype=torch.bfloat16)
    configs = (((64, 64, 32, 32), 8, 2), ((64, 32, 32, 32), 4, 2), ((128, 64, 64, 32), 8, 2), ((64, 64, 32, 32), 8, 1))
    for tiles, warps, stages in configs:
        name = f"L1 Triton kernel {tiles} w{warps} s{stages}"
        try:
            fn = functools.partial(
                wat.window_attention, *l1_ops, H1, kw["window"], tiles=tiles, num_warps=warps, num_stages=stages
            )
            with torch.no_grad():
                timed(name + " fwd", fn)
            timed(name + " fwd+bwd", lambda fn=fn: fn().backward(o1m))
        except Exception as e:  # noqa: BLE001 (a tuning aid: report and go on)
            print(f"{name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
    try:
        with torch.no_grad():
            fused = wat.window_attention(*l1_ops, H1, kw["window"])
            banded = ha.merge_heads(ha._window_attention_banded_compiled(*l1_ops, H1, kw["window"], g_))
        print(f"L1 Triton vs banded, max |diff| {(fused.float() - banded.float()).abs().max().item():.3e}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"L1 Triton vs banded: {type(e).__name__}: {str(e)[:200]}", flush=True)
    kernel_in_use = ha.L1_CUDA_KERNEL
    other = "banded" if kernel_in_use == "triton" else "triton"
    try:  # the whole step with the other L1 kernel, against the first line
        ha.set_l1_cuda_kernel(other)
        timed(f"whole step fwd+bwd (L1: {other})", whole)
    except Exception as e:  # noqa: BLE001
        print(f"whole step (L1: {other}): {type(e).__name__}: {str(e)[:200]}", flush=True)
    finally:
        ha.set_l1_cuda_kernel(kernel_in_use)
l1b = [
    x.detach()
    .contiguous()
    .view(B, H1, T, 2, d // H1 // 2)
    .transpose(2, 3)
    .reshape(B, 2 * H1, T, d // H1 // 2)
    .requires_grad_(True)
    for x in l1_in
]
o1b = torch.randn(B, 2 * H1, T, d // H1 // 2, device="cuda", dtype=torch.bfloat16)
timed(f"L1 flex kernel fwd+bwd at hd {d // H1 // 2} (same window)", lambda: ha._flex(*l1b, m1, 0.1).backward(o1b))


def l2_mask():
    with torch.no_grad():
        idx, valid, _ = ha._route_compiled(
            q, k, n_heads=H2, paragraph_size=g_, top_k=kw["top_k"], first_block=0, n_blocks=T // g_
        )
        return ha.paragraph_block_mask(idx, valid, n_par=n_par, length=T, paragraph_size=g_, span=G_ // g_)


timed("L2 routing + block mask", l2_mask)
m2 = l2_mask()
l2_in = leaf(ha.split_heads(qr, H2), ha.split_heads(kbuf, H2), ha.split_heads(vbuf, H2))
o2g = torch.randn(B, H2, T, d // H2, device="cuda", dtype=torch.bfloat16)
timed(f"L2 flex kernel fwd+bwd (hd {d // H2})", lambda: ha._flex(*l2_in, m2, (d // H2) ** -0.5).backward(o2g))
timed("L3 in use fwd+bwd", lambda: ha._document_attention(qr, k3, v3, H3, G_, T).backward(g))
sdpa_l3 = torch.compile(ha._document_attention_sdpa, dynamic=False)
timed("L3 through SDPA, compiled", lambda: sdpa_l3(qr, k3, v3, H3, G_, T).backward(g))
timed(
    "dense cuDNN SDPA fwd+bwd (16 x 128, no rotary)",
    lambda: torch.nn.functional.scaled_dot_product_attention(
        *[ha.split_heads(x, 16) for x in (q, k, v)], is_causal=True
    ).backward(torch.ones(B, 16, T, 128, device="cuda", dtype=torch.bfloat16)),
)

for _ in range(3):
    whole()
torch.cuda.synchronize()
with torch.profiler.profile(
    activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]
) as prof:
    whole()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))

# last: a fault in this graph (an illegal memory access in inductor's autotuning of its backward at 8k x 8,
# H100, torch 2.11) poisons the CUDA context, so every figure above is printed first
whole_graph = torch.compile(ha.hierarchical_attention_flex, fullgraph=True, dynamic=False)
timed(
    "whole step fwd+bwd, one compiled graph (as under model.compile)",
    lambda: torch.autograd.backward(whole_graph(q, k, v, **kw), (g, g, g)),
)
