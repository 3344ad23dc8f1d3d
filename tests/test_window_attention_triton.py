"""The Triton window-attention kernels (r1_ds/model/window_attention_triton.py), L1's kernel on CUDA, against
plain masked attention, forward and q/k/v gradients, through Triton's interpreter on CPU tensors (fp32), eager and
under torch.compile. The interpreter is chosen when the kernels are defined, so the cases run in a child process
with TRITON_INTERPRET=1. On the GPU, tests/test_cuda_fast_path.py holds the compiled kernels to the same reference
in bf16 and fp16."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")

from r1_ds.model import window_attention_triton as wat  # noqa: E402

CASES = textwrap.dedent(
    """
    import torch
    from r1_ds.model.window_attention_triton import window_attention

    def reference(q, k, v, H, window):
        B, T, d = q.shape
        hd = d // H
        qh, kh, vh = (x.view(B, T, H, hd).transpose(1, 2).double() for x in (q, k, v))
        s = qh @ kh.transpose(-1, -2) * hd**-0.5
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        s = s.masked_fill(~((j <= i) & (j > i - window)), float("-inf"))
        return (s.softmax(-1) @ vh).transpose(1, 2).reshape(B, T, d)

    def operands(B, T, d, layout):
        # -> the leaf tensors, and the q, k, v views the kernels read
        if layout == "split":  # one fused projection: q, k, v share every stride
            qkv = torch.randn(B, T, 3 * d, requires_grad=True)
            return [qkv], qkv.split(d, dim=-1)
        # q contiguous; k, v slices of longer, wider buffers (like L2's [summaries | tokens]): every stride differs
        q = torch.randn(B, T, d, requires_grad=True)
        kb = torch.randn(B, 8 + T, 2 * d, requires_grad=True)
        vb = torch.randn(B, 24 + T, 3 * d, requires_grad=True)
        return [q, kb, vb], (q, kb[:, 8:, :d], vb[:, 24:, d : 2 * d])

    torch.manual_seed(0)
    # (B, T, H, hd, window, tiles, layout): windows inside a tile, at its edge, across tiles, of one and two tokens,
    # and just past a multiple of the backward's query tile (the last query reading a key block opens a new tile);
    # unequal forward and backward tiles; q, k, v with shared and with different strides
    cases = [
        (2, 64, 2, 16, 16, (16, 16, 16, 16), "split"),
        (1, 96, 2, 32, 24, (16, 32, 32, 16), "split"),
        (1, 128, 2, 16, 40, (32, 32, 16, 32), "split"),
        (2, 64, 1, 16, 1, (32, 16, 16, 16), "split"),
        (1, 64, 4, 16, 17, (16, 16, 16, 16), "split"),
        (2, 64, 2, 16, 18, (16, 16, 16, 16), "slices"),
        (1, 64, 2, 16, 2, (16, 16, 32, 16), "slices"),
        (2, 96, 2, 32, 33, (32, 16, 32, 32), "slices"),
    ]
    for B, T, H, hd, window, tiles, layout in cases:
        d = H * hd
        leaves, (q, k, v) = operands(B, T, d, layout)
        out = window_attention(q, k, v, H, window, tiles=tiles, num_warps=4)
        ref = reference(q, k, v, H, window)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, g)
        grads_ref = torch.autograd.grad(ref, leaves, g.double())
        torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-5)

    # under torch.compile (fullgraph: the kernels are custom ops with a registered backward, traced through their
    # fake versions, never graph-broken), the same forward and gradients as eager
    def f(qkv):
        q, k, v = qkv.split(32, dim=-1)
        return window_attention(q * 2.0, k, v, 2, 18, tiles=(16, 16, 16, 16), num_warps=4)

    qkv = torch.randn(2, 64, 96, requires_grad=True)
    g = torch.randn(2, 64, 32)
    eager = f(qkv)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(qkv)
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)
    torch.testing.assert_close(torch.autograd.grad(compiled, qkv, g), torch.autograd.grad(eager, qkv, g), atol=0, rtol=0)
    print("ok", len(cases))
    """
)


def test_window_kernels_equal_masked_attention_in_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", CASES], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("ok 8")


@pytest.mark.parametrize(
    "T, d, heads, match",
    [(100, 64, 2, "multiple of every tile"), (128, 96, 2, "power of two"), (128, 64, 3, "not a multiple of n_heads")],
)
def test_window_attention_refuses_shapes_its_kernels_cannot_tile(T, d, heads, match):
    q = torch.randn(1, T, d)
    with pytest.raises(ValueError, match=match):
        wat.window_attention(q, q, q, heads, 16, tiles=(32, 32, 32, 32))


def test_window_attention_refuses_mixed_dtypes_and_an_empty_window():
    q = torch.randn(1, 64, 64)
    with pytest.raises(ValueError, match="share one dtype"):
        wat.window_attention(q, q, q.double(), 2, 16, tiles=(32, 32, 32, 32))
    with pytest.raises(ValueError, match="at least 1"):
        wat.window_attention(q, q, q, 2, 0, tiles=(32, 32, 32, 32))
    assert wat.unsupported(q, 2, 16, (32, 32, 32, 32)) is None  # fp32 is fine off CUDA (the interpreter)


def test_shared_memory_estimate_tells_the_cards_apart():
    """The default tiles at head size 256 (the 1.3B preset) fit an A100's 163 KB per block, not a consumer card's
    99 KB; at head size 128 (the 350M preset) they fit that too. With 64-key tiles in the forward, head size 256
    needs a Hopper's 227 KB. Two stages hold two copies of the streamed tiles."""
    kb = 1024
    assert 99 * kb < wat.shared_memory_bytes(256, wat.DEFAULT_TILES) <= 163 * kb
    assert wat.shared_memory_bytes(128, wat.DEFAULT_TILES) <= 99 * kb
    assert 163 * kb < wat.shared_memory_bytes(256, (64, 64, 32, 32)) <= 227 * kb
    one, two = (wat.shared_memory_bytes(256, wat.DEFAULT_TILES, stages) for stages in (1, 2))
    bm, bn, bwm, bwn = wat.DEFAULT_TILES
    assert two - one == 2 * max(bn, bwn, bwm) * 256 * 2  # one more copy of the two streamed tiles, bf16
    assert wat.shared_memory_bytes(256, wat.DEFAULT_TILES, itemsize=4) == 2 * two  # fp32 doubles every tile


@pytest.mark.parametrize("value, expect", [("banded", "banded"), (None, "triton"), ("flash", "not one of")])
def test_l1_kernel_is_chosen_by_the_environment(value, expect):
    code = "import r1_ds.model.hierarchical_attention as ha; print(ha.L1_CUDA_KERNEL)"
    env = {k: v for k, v in os.environ.items() if k != "R1_L1_CUDA_KERNEL"}
    if value is not None:
        env["R1_L1_CUDA_KERNEL"] = value
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert expect in (r.stdout if r.returncode == 0 else r.stderr)
    assert (r.returncode == 0) == (expect != "not one of")
