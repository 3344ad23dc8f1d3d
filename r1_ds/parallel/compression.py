"""Gradient compression math: top-k / threshold selection, int8 quantization, error feedback.

Pure tensor functions on one flat fp32 gradient vector; no torch.distributed here. The communication glue that
calls them lives in `r1_ds/parallel/comm_hook.py`; docs/compression.md describes the algorithm and wire format.

Shapes: a bucket is a flat vector `x` of `n` elements; a selection is `idx` (c,) int64, sorted ascending;
quantized values are `q` (p,) int8 with `scales` (p // chunk,) fp32, where p is c rounded up to a multiple of `chunk`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

INT8_MAX = 127  # symmetric int8: -127..127, so that q and -q are both representable


# ---------------------------------------------------------------------------------------------------------------
# selection


def num_selected(numel: int, ratio: float) -> int:
    """How many elements a top-`ratio` selection of `numel` elements keeps (at least one)."""
    return max(1, min(numel, math.ceil(ratio * numel)))


def topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Exact top-k by magnitude; (k,) int64 sorted ascending (the reference selection)."""
    idx = torch.topk(x.abs(), k, sorted=False).indices
    return idx.sort().values


def sample_positions(numel: int, size: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Fixed pseudo-random positions for threshold estimation, the same on every rank for the same `numel`."""
    if size >= numel:
        return torch.arange(numel, device=device)
    gen = torch.Generator().manual_seed(numel)  # same bucket size -> same sample on every rank and stage
    return torch.randint(numel, (size,), generator=gen).sort().values.to(device)


def threshold_indices(x: torch.Tensor, ratio: float, sample: torch.Tensor) -> torch.Tensor:
    """About `ratio * n` largest-magnitude elements, found by a threshold estimated on a sample.

    Returns the exact set {i : |x_i| >= t, x_i != 0} for a threshold t taken as the top-`ratio` quantile of
    |x[sample]|, so the result is an exact top-c for its own count c (c is within a few percent of ratio * n for a
    sample of 64k). One elementwise pass and a small top-k instead of a top-k over all n elements. Falls back to
    `topk_indices` when ties make the set more than twice too large. (c,) int64 sorted ascending.
    """
    n = x.numel()
    k = num_selected(n, ratio)
    mag_sample = x[sample].abs()
    ks = num_selected(mag_sample.numel(), ratio)
    t = torch.topk(mag_sample, ks, sorted=False).values.min()
    mag = x.abs()
    idx = ((mag >= t) & (mag > 0)).nonzero().squeeze(1)  # nonzero returns ascending positions
    if idx.numel() > 2 * k:
        return topk_indices(x, k)
    return idx


def select_indices(x: torch.Tensor, ratio: float, *, method: str, sample: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch on `method` ("topk" or "threshold"); (c,) int64 sorted ascending."""
    if method == "topk":
        return topk_indices(x, num_selected(x.numel(), ratio))
    if method == "threshold":
        if sample is None:
            raise ValueError("threshold selection needs `sample` positions; build them with sample_positions()")
        return threshold_indices(x, ratio, sample)
    raise ValueError(f"method={method!r}: must be 'topk' or 'threshold'")


# ---------------------------------------------------------------------------------------------------------------
# index encoding on the wire


def index_format(ratio: float) -> str:
    """'bitmap' (n/8 bytes) when it is smaller than int32 positions (4 bytes per selected element), else 'int32'."""
    return "bitmap" if ratio > 1 / 32 else "int32"


def pack_bitmap(idx: torch.Tensor, numel: int) -> torch.Tensor:
    """Positions -> packed bitmap, (ceil(numel / 8),) uint8, bit b of byte i is position 8 * i + b."""
    nbytes = (numel + 7) // 8
    bits = torch.zeros(nbytes * 8, dtype=torch.uint8, device=idx.device)
    bits[idx] = 1
    # shifts made on the device (as in unpack_bitmap): a tensor from a Python list is a host-to-device copy per call
    shifts = torch.arange(8, dtype=torch.uint8, device=idx.device)
    return torch.bitwise_left_shift(bits.view(nbytes, 8), shifts).sum(1, dtype=torch.uint8)


def unpack_bitmap(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Packed bitmap -> positions, (c,) int64 sorted ascending."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = torch.bitwise_and(torch.bitwise_right_shift(packed.unsqueeze(1), shifts), 1)  # (nbytes, 8)
    return bits.view(-1)[:numel].nonzero().squeeze(1)


# ---------------------------------------------------------------------------------------------------------------
# int8 quantization with one fp32 scale per chunk


def padded_length(count: int, multiple: int) -> int:
    """`count` rounded up to a multiple of `multiple`, and at least one multiple (collectives dislike empty tensors)."""
    return max(1, math.ceil(count / multiple)) * multiple


def quantize_int8(v: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per `chunk` elements.

    v: (c,) float. Returns q: (p,) int8 and scales: (p // chunk,) fp32 with p = padded_length(c, chunk); the padding
    is zeros. Each value maps to round(v * 127 / max|chunk|), so the error is at most scale / 2 per element.
    """
    p = padded_length(v.numel(), chunk)
    vp = F.pad(v.float(), (0, p - v.numel())).view(-1, chunk)  # (p // chunk, chunk)
    amax = vp.abs().amax(dim=1)
    inv = torch.where(amax > 0, INT8_MAX / amax, torch.zeros_like(amax))
    q = torch.round(vp * inv[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.view(-1), amax / INT8_MAX


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, chunk: int) -> torch.Tensor:
    """q: (p,) int8, scales: (p // chunk,) -> (p,) fp32."""
    return (q.view(-1, chunk).float() * scales[:, None]).view(-1)


def sum_dequantized(q: torch.Tensor, scales: torch.Tensor, chunk: int) -> torch.Tensor:
    """Sum W int8 contributions in rank order: q (W, m) int8, scales (W, m // chunk) -> (m,) fp32."""
    w, m = q.shape
    vals = q.view(w, m // chunk, chunk).float() * scales.view(w, m // chunk, 1)
    out = vals[0].clone()
    for r in range(1, w):  # fixed order, so every owner adds the same way
        out += vals[r]
    return out.view(m)


# ---------------------------------------------------------------------------------------------------------------
# one rank's compressed message, and error feedback


@dataclass
class SparseInt8:
    """A compressed bucket: which elements, their int8 codes and the per-chunk scales."""

    indices: torch.Tensor  # (c,) int64 sorted ascending
    q: torch.Tensor  # (p,) int8, p = padded_length(c, chunk)
    scales: torch.Tensor  # (p // chunk,) fp32
    chunk: int  # elements per scale

    def values(self) -> torch.Tensor:
        """The decoded values at `indices`, (c,) fp32."""
        return dequantize_int8(self.q, self.scales, self.chunk)[: self.indices.numel()]

    def nbytes(self, *, index_format: str, numel: int) -> int:
        """Bytes of this message on the wire: indices (bitmap or int32) + int8 codes + fp32 scales."""
        idx_bytes = (numel + 7) // 8 if index_format == "bitmap" else 4 * self.indices.numel()
        return idx_bytes + self.q.numel() + 4 * self.scales.numel()


def compress(
    x: torch.Tensor, *, ratio: float, chunk: int, method: str = "topk", sample: torch.Tensor | None = None
) -> SparseInt8:
    """Select the top-`ratio` elements of `x` (n,) and quantize them to int8."""
    idx = select_indices(x, ratio, method=method, sample=sample)
    q, scales = quantize_int8(x[idx], chunk)
    return SparseInt8(idx, q, scales, chunk)


def decompress(msg: SparseInt8, numel: int) -> torch.Tensor:
    """The dense (numel,) fp32 vector a message stands for (zeros where nothing was sent)."""
    out = torch.zeros(numel, dtype=torch.float32, device=msg.q.device)
    out[msg.indices] = msg.values()
    return out


def add_error(grad: torch.Tensor, error: torch.Tensor | None) -> torch.Tensor:
    """Error feedback, part 1: what this rank should send now, x = grad + carried error, as a new fp32 tensor."""
    x = grad.to(torch.float32, copy=True)
    if error is not None:
        x += error
    return x


def residual(x: torch.Tensor, indices: torch.Tensor, sent: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Error feedback, part 2: the new error, x minus what was sent (`sent` (c,) are the decoded values at `indices`).
    With inplace=True, x itself becomes the error (saves a gradient-sized copy when x is no longer needed).

    Invariant (tested): residual + decompress(message) == x, elementwise, up to one fp32 rounding.
    """
    err = x if inplace else x.clone()
    err[indices] -= sent
    return err
