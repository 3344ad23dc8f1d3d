"""Which FlexAttention tile configs suit hierarchical attention's L1 and L2 kernels on this GPU: each
level's kernel timed fwd+bwd with the kernel options `_flex` picks, then with inductor's max-autotune
search (its AUTOTUNE lines on stderr list every config tried). A tuning aid, not a benchmark. (With the
presets' window L1 runs the Triton window kernels on CUDA, or the banded kernel, not flex; L1 here is the flex
path of wider windows.)

    python benchmarks/flex_autotune.py --T 8192 --batch 8 2> autotune.log
"""

import argparse
import os
import sys
import time

import torch
from torch.nn.attention.flex_attention import flex_attention

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks.* as a package
from benchmarks.attention import time_fn
from r1_ds.model import hierarchical_attention as ha

p = argparse.ArgumentParser()
p.add_argument("--T", type=int, default=8192)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--dim", type=int, default=2048)
p.add_argument("--levels", nargs="+", default=["L1", "L2"], choices=["L1", "L2"])
args = p.parse_args()
kw = dict(level_heads=(8, 16, 32), window=128, paragraph_size=128, document_size=1024, top_k=4, rope_theta=10000.0)
B, T, d = args.batch, args.T, args.dim
H1, H2, _ = kw["level_heads"]
g_, G_ = kw["paragraph_size"], kw["document_size"]
n_par = T // g_
q, k, v = (torch.randn(B, T, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
qr, kr, vp, kbuf, vbuf, _, _, S = ha.flex_operands(
    q, k, v, level_heads=kw["level_heads"], paragraph_size=g_, document_size=G_, rope_theta=kw["rope_theta"]
)
with torch.no_grad():
    idx, valid, _ = ha._route_compiled(
        q, k, n_heads=H2, paragraph_size=g_, top_k=kw["top_k"], first_block=0, n_blocks=T // g_
    )
cases = {
    "L1": (
        [ha.split_heads(x, H1) for x in (qr, kr, vp)],
        ha._window_block_mask(T, kw["window"], g_, "cuda"),
        (d // H1) ** -0.5,
    ),
    "L2": (
        [ha.split_heads(x, H2) for x in (qr, kbuf, vbuf)],
        ha.paragraph_block_mask(idx, valid, n_par=n_par, length=T, paragraph_size=g_, span=G_ // g_),
        (d // H2) ** -0.5,
    ),
}
tuned = torch.compile(flex_attention, dynamic=False, mode="max-autotune-no-cudagraphs")


def timed(fn):
    return time_fn(fn, "cuda", 10) * 1e3  # median ms


for name in args.levels:
    xs, mask, scale = cases[name]
    xs = [x.detach().contiguous().requires_grad_(True) for x in xs]
    grad = torch.randn_like(xs[0])
    hd = xs[0].shape[-1]
    runs = {
        "r1_ds default": lambda: ha._flex(*xs, mask, scale),
        "max-autotune": lambda: tuned(*xs, block_mask=mask, scale=scale),
    }
    for label, fn in runs.items():
        t0 = time.perf_counter()
        fn().backward(grad)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        with torch.no_grad():
            fwd = timed(fn)
        both = timed(lambda: fn().backward(grad))
        print(
            f"{name} hd {hd} T {T} B {B} {label:<14} fwd {fwd:7.2f} ms  bwd {both - fwd:7.2f} ms  "
            f"fwd+bwd {both:7.2f} ms  (first call {first:5.1f} s)",
            flush=True,
        )
