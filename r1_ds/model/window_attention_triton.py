"""L1 (causal sliding-window attention) as fused Triton kernels, forward and backward, reading and writing the
(B, T, d) layout where the heads lie side by side: no per-head copy of q, k, v or of the output, no score matrix
in memory. L1's kernel on CUDA (hierarchical_attention.L1_CUDA_KERNEL); the banded form (or flex, for wide
windows) runs the calls these cannot take (`unsupported`) and every call when R1_L1_CUDA_KERNEL=banded.
benchmarks/profile_attention.py times both and several tile shapes of these.

Why: with 8 heads of d = 2048 the head size is 256. The explicit banded form (hierarchical_attention.py) pays for
a per-head layout copy of q, k, v, a score matrix of (n_prev + 1) blocks per query block, and their backward;
flex's generic kernel runs small tiles at that head size and evaluates its block tables. One H100 at 8k x 8
spent 6.28 ms (banded) and 5.48 ms (flex) on L1 alone, these kernels 3.11 ms (benchmarks/results/attention.md);
reading q, k, v, o and writing their gradients is about 3.2 GB, an estimated 1 ms at the H100's memory bandwidth.

The forward is FlashAttention's online softmax over the few key blocks the window reaches; it saves the
log-sum-exp of each query's scores. The backward runs two kernels, FlashAttention-2 style: one program per query
block accumulates dQ (after storing each row's do . o, the softmax backward's correction), then one program per
key block accumulates dK and dV over the query blocks that see it; each recomputes the probabilities from the
saved log-sum-exp. Both are deterministic (no atomics).

The forward and the backward are custom ops (r1_ds::window_attention_fwd / _bwd) with a registered backward, so
torch.compile (a compiled decoder block) calls them whole, through their fake versions while tracing. The
kernels also run under TRITON_INTERPRET=1 on CPU tensors (fp32), which is how the CPU tests check them.
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # an install without triton: L1 runs the banded form or flex, nothing else changes
    triton = None


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _tile(X, b, stride_b, stride_t, offs_t, h, HD: tl.constexpr):
        # pointers to head h's columns of rows offs_t of batch b, in a (B, T, d) tensor with the heads side by side
        return X + b * stride_b + offs_t[:, None] * stride_t + h * HD + tl.arange(0, HD)[None, :]

    @triton.jit
    def _visible(offs_m, offs_n, WINDOW: tl.constexpr):
        # causal window of WINDOW tokens, the query itself included: q - WINDOW < kv <= q
        return (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] > offs_m[:, None] - WINDOW)

    @triton.jit
    def _probs_and_score_grads(q, k, v, do, lse, delta, offs_m, offs_n, qk_scale, WINDOW: tl.constexpr):
        # the backward's tile: P from the saved log-sum-exp (log2 units), and dS = P * (dP - delta), dP = dO V^T
        s = tl.dot(q, tl.trans(k)) * qk_scale
        p = tl.where(_visible(offs_m, offs_n, WINDOW), tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v))
        return p, p * (dp - delta[:, None])

    @triton.jit
    def _fwd_kernel(
        Q, K, V, Out, LSE,
        stride_qb, stride_qt, stride_kb, stride_kt, stride_vb, stride_vt, stride_ob, stride_ot,
        T, H, qk_scale,
        WINDOW: tl.constexpr, HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        m0 = tl.program_id(0) * BLOCK_M
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)  # b * stride reaches past 2^31 elements at long lengths with fused-qkv views
        h = bh % H
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q = tl.load(_tile(Q, b, stride_qb, stride_qt, offs_m, h, HD))
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HD], tl.float32)
        lo = tl.maximum(m0 - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
        for n0 in range(lo, m0 + BLOCK_M, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k = tl.load(_tile(K, b, stride_kb, stride_kt, offs_n, h, HD))
            v = tl.load(_tile(V, b, stride_vb, stride_vt, offs_n, h, HD))
            s = tl.dot(q, tl.trans(k)) * qk_scale  # log2 units
            s = tl.where(_visible(offs_m, offs_n, WINDOW), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block none of a row's keys are in
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        # every query sees itself, so l_i > 0 and m_i is finite
        acc = acc / l_i[:, None]
        tl.store(_tile(Out, b, stride_ob, stride_ot, offs_m, h, HD), acc.to(Out.dtype.element_ty))
        tl.store(LSE + bh * T + offs_m, m_i + tl.math.log2(l_i))  # log2 units

    @triton.jit
    def _bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV,
        stride_qb, stride_qt, stride_kb, stride_kt, stride_vb, stride_vt, stride_dob, stride_dot,
        stride_gb, stride_gt,
        T, H, qk_scale, sm_scale,
        WINDOW: tl.constexpr, HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        n0 = tl.program_id(0) * BLOCK_N
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)  # b * stride reaches past 2^31 elements at long lengths with fused-qkv views
        h = bh % H
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = tl.load(_tile(K, b, stride_kb, stride_kt, offs_n, h, HD))
        v = tl.load(_tile(V, b, stride_vb, stride_vt, offs_n, h, HD))
        dk = tl.zeros([BLOCK_N, HD], tl.float32)
        dv = tl.zeros([BLOCK_N, HD], tl.float32)
        # the queries that see a key of this block: n0 .. n0 + BLOCK_N - 1 + WINDOW - 1
        hi = tl.minimum(n0 + BLOCK_N + WINDOW - 1, T)
        for m0 in range(n0 // BLOCK_M * BLOCK_M, hi, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            q = tl.load(_tile(Q, b, stride_qb, stride_qt, offs_m, h, HD))
            do = tl.load(_tile(DO, b, stride_dob, stride_dot, offs_m, h, HD))
            lse = tl.load(LSE + bh * T + offs_m)
            delta = tl.load(DELTA + bh * T + offs_m)
            p, ds = _probs_and_score_grads(q, k, v, do, lse, delta, offs_m, offs_n, qk_scale, WINDOW)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
        tl.store(_tile(DK, b, stride_gb, stride_gt, offs_n, h, HD), (dk * sm_scale).to(DK.dtype.element_ty))
        tl.store(_tile(DV, b, stride_gb, stride_gt, offs_n, h, HD), dv.to(DV.dtype.element_ty))

    @triton.jit
    def _bwd_dq_kernel(
        Q, K, V, Out, DO, LSE, DELTA, DQ,
        stride_qb, stride_qt, stride_kb, stride_kt, stride_vb, stride_vt, stride_dob, stride_dot,
        stride_gb, stride_gt,
        T, H, qk_scale, sm_scale, stride_ob, stride_ot,
        WINDOW: tl.constexpr, HD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        m0 = tl.program_id(0) * BLOCK_M
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)  # b * stride reaches past 2^31 elements at long lengths with fused-qkv views
        h = bh % H
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q = tl.load(_tile(Q, b, stride_qb, stride_qt, offs_m, h, HD))
        do = tl.load(_tile(DO, b, stride_dob, stride_dot, offs_m, h, HD))
        lse = tl.load(LSE + bh * T + offs_m)
        # delta_i = sum_j P_ij dP_ij = do_i . o_i: computed here, where do is loaded anyway, and stored for the
        # dK/dV kernel, which runs after this one
        o = tl.load(_tile(Out, b, stride_ob, stride_ot, offs_m, h, HD))
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + bh * T + offs_m, delta)
        dq = tl.zeros([BLOCK_M, HD], tl.float32)
        lo = tl.maximum(m0 - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
        for n0 in range(lo, m0 + BLOCK_M, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k = tl.load(_tile(K, b, stride_kb, stride_kt, offs_n, h, HD))
            v = tl.load(_tile(V, b, stride_vb, stride_vt, offs_n, h, HD))
            _, ds = _probs_and_score_grads(q, k, v, do, lse, delta, offs_m, offs_n, qk_scale, WINDOW)
            dq += tl.dot(ds.to(k.dtype), k)
        tl.store(
            _tile(DQ, b, stride_gb, stride_gt, offs_m, h, HD),
            (dq * sm_scale).to(DQ.dtype.element_ty),
        )


LOG2E = 1.0 / math.log(2.0)
# (query, key) tile of the forward, then of the backward; warps per program. Four warps on these tiles ran the
# forward and backward at head size 256 in 3.11 ms against 4.70 ms for (64, 64, 32, 32) with eight on one H100
# at 8k x 8 (benchmarks/profile_attention.py): eight warps on a 32 x 32 tile of the backward mostly wait.
DEFAULT_TILES = (64, 32, 32, 32)
DEFAULT_WARPS = 4
DEFAULT_STAGES = 2


def shared_memory_bytes(head_size: int, tiles, stages: int = DEFAULT_STAGES, itemsize: int = 2) -> int:
    """The most shared memory one program of the three kernels holds, estimated: the tiles it keeps for the whole
    loop, `stages` copies of the two tiles it streams, and a score tile for the second dot's operand."""
    bm, bn, bwm, bwn = tiles
    forward = bm + 2 * stages * bn  # q kept; k and v streamed
    dq = 2 * bwm + 2 * stages * bwn  # q and dO kept; k and v streamed
    dkdv = 2 * bwn + 2 * stages * bwm  # k and v kept; q and dO streamed
    rows = max(forward, dq, dkdv)
    return rows * head_size * itemsize + max(bm * bn, bwm * bwn) * itemsize


def unsupported(q: torch.Tensor, n_heads: int, window: int, tiles=None, stages: int = DEFAULT_STAGES) -> str | None:
    """Why the kernels cannot take this call (None: they can). On CUDA they take bf16 / fp16 only: fp32 tiles of
    head size 256 overflow shared memory, and tl.dot would run fp32 as TF32. A GPU with less shared memory per
    block than the tiles need (a consumer card's 99 KB, against about 100 KB at head size 256 with the default
    tiles) cannot take them either; the caller's other kernel runs there."""
    B, T, d = q.shape
    if window < 1:
        return f"window={window} must be at least 1 (a query sees itself)"
    if d % n_heads:
        return f"d={d} is not a multiple of n_heads={n_heads}"
    hd = d // n_heads
    if hd & (hd - 1) or hd < 16:
        return f"head size {hd} must be a power of two, at least 16 (Triton tiles)"
    tiles = tuple(tiles or DEFAULT_TILES)
    if any(T % t for t in tiles):
        return f"T={T} must be a multiple of every tile {tiles}; pad it"
    if q.is_cuda and q.dtype not in (torch.bfloat16, torch.float16):
        return f"{q.dtype} on CUDA: the kernels take bf16 or fp16"
    if q.is_cuda:
        need = shared_memory_bytes(hd, tiles, stages, q.element_size())
        have = _shared_memory_per_block(q.device.index)
        if need > have:
            return (
                f"tiles {tiles} at head size {hd} need about {need // 1024} KB of shared memory per block, "
                f"this GPU has {have // 1024} KB; pass smaller tiles"
            )
    return None


_SHARED_MEMORY_PER_BLOCK: dict[int | None, int] = {}


# a constant to torch.compile, and asked of the driver once per device: the fast path asks in every layer's
# forward, inside compiled decoder blocks too
@torch.compiler.assume_constant_result
def _shared_memory_per_block(index: int | None) -> int:
    if index not in _SHARED_MEMORY_PER_BLOCK:
        props = torch.cuda.get_device_properties(index)
        # the opt-in limit a kernel may ask for; builds without the field report the default limit
        optin = getattr(props, "shared_memory_per_block_optin", 0)
        _SHARED_MEMORY_PER_BLOCK[index] = optin or props.shared_memory_per_block
    return _SHARED_MEMORY_PER_BLOCK[index]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int, window: int, tiles, stages) -> int:
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"window_attention: q, k, v must share one (B, T, d) shape, got {q.shape}, {k.shape}, {v.shape}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"window_attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    why = unsupported(q, n_heads, window, tiles, stages)
    if why:
        raise ValueError(f"window_attention: {why}")
    if any(x.stride(-1) != 1 for x in (q, k, v)):
        raise ValueError("window_attention: q, k, v need unit stride along d")
    return q.shape[-1] // n_heads


# The kernels as custom ops with a registered backward: opaque to torch.compile (a compiled decoder block calls
# them as they are instead of tracing Triton launches and an autograd.Function), with fake versions for its tracing.
@torch.library.custom_op("r1_ds::window_attention_fwd", mutates_args=())
def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_heads: int,
    window: int,
    tiles: list[int],
    warps: int,
    stages: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (out (B, T, d), log2-domain log-sum-exp of each query's scores (B * n_heads, T) fp32)"""
    B, T, d = q.shape
    hd = _check(q, k, v, n_heads, window, tiles, stages)
    block_m, block_n = tiles[:2]
    scale = hd**-0.5
    o = torch.empty(B, T, d, device=q.device, dtype=q.dtype)
    lse = torch.empty(B * n_heads, T, device=q.device, dtype=torch.float32)
    _fwd_kernel[(T // block_m, B * n_heads)](
        q, k, v, o, lse,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1),
        T, n_heads, scale * LOG2E,
        WINDOW=window, HD=hd, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return o, lse


@_forward.register_fake
def _(q, k, v, n_heads, window, tiles, warps, stages):
    B, T, d = q.shape
    return q.new_empty(B, T, d), q.new_empty(B * n_heads, T, dtype=torch.float32)


@torch.library.custom_op("r1_ds::window_attention_bwd", mutates_args=())
def _backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    n_heads: int,
    window: int,
    tiles: list[int],
    warps: int,
    stages: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dq, dk, dv), each (B, T, d)"""
    B, T, d = q.shape
    block_m, block_n = tiles[2:]
    hd = d // n_heads
    scale = hd**-0.5
    do = do if do.stride(-1) == 1 else do.contiguous()
    delta = torch.empty_like(lse)  # written by the dQ kernel, read by the dK/dV kernel
    dq, dk, dv = (torch.empty(B, T, d, device=q.device, dtype=q.dtype) for _ in range(3))
    args = (
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dq.stride(0), dq.stride(1), T, n_heads, scale * LOG2E, scale,
    )  # fmt: skip
    meta = dict(WINDOW=window, HD=hd, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
    _bwd_dq_kernel[(T // block_m, B * n_heads)](q, k, v, o, do, lse, delta, dq, *args, o.stride(0), o.stride(1), **meta)
    _bwd_dkdv_kernel[(T // block_n, B * n_heads)](q, k, v, do, lse, delta, dk, dv, *args, **meta)
    return dq, dk, dv


@_backward.register_fake
def _(do, q, k, v, o, lse, n_heads, window, tiles, warps, stages):
    return tuple(torch.empty(q.shape, device=q.device, dtype=q.dtype) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, *cfg = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.cfg = cfg


def _autograd_backward(ctx, do, _dlse):
    q, k, v, o, lse = ctx.saved_tensors
    return (*_backward(do, q, k, v, o, lse, *ctx.cfg), *([None] * len(ctx.cfg)))


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_heads: int,
    window: int,
    *,
    tiles: tuple[int, int, int, int] = DEFAULT_TILES,
    num_warps: int = DEFAULT_WARPS,
    num_stages: int = DEFAULT_STAGES,
) -> torch.Tensor:
    """Causal sliding-window attention of (B, T, d) q, k, v (rotated already), n_heads heads of d / n_heads side
    by side, each query seeing the last `window` tokens, itself included. -> (B, T, d), the heads side by side.

    tiles: (query, key) tile of the forward, then of the backward, whose programs hold two fp32 accumulators of
    a tile by the head size (dK and dV), hence smaller tiles. T must be a multiple of every tile (the fast path
    pads to whole paragraphs). num_stages: how many key tiles the kernels prefetch into shared memory (at head size
    256 one key and one value tile of 32 rows take 32 KB)."""
    if triton is None:
        raise RuntimeError("window_attention needs triton (pip install triton), which this install lacks")
    return _forward(q, k, v, n_heads, window, list(tiles), num_warps, num_stages)[0]
