"""The two compressed reductions of one bucket over the data-parallel group, as functions of the bucket's input
`x` (gradient + carried error, (n,) fp32) and a `Wire` (the group's collectives, counting bytes). They return the
dense average to apply and the new error buffer; the math they call is r1_ds.parallel.compression, the glue that
feeds them gradients is r1_ds.parallel.comm_hook. docs/compression.md describes both modes and their wire format.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import compression as C

__all__ = ["Wire", "allgather_reduce", "leader_reduce", "ring_bytes"]


def ring_bytes(op: str, payload: int, world: int) -> float:
    """Bytes one rank transmits for a collective under ring algorithms (NCCL's bus-bandwidth model).

    all_reduce 2(W-1)/W * payload; all_gather (W-1) * payload (payload = this rank's input);
    all_to_all and broadcast (W-1)/W * payload (payload = the whole buffer).
    """
    if world <= 1:
        return 0.0
    if op == "all_reduce":
        return 2 * (world - 1) / world * payload
    if op == "all_gather":
        return (world - 1) * payload
    if op in ("all_to_all", "broadcast"):
        return (world - 1) / world * payload
    raise ValueError(op)


class Wire:
    """The data-parallel group's collectives for one reduction: counts the bytes of each (payload handed over and
    ring-model bytes sent, in `stats`) and, with `sync` (the accelerator's synchronize; the `timing` setting),
    the device time around each in stats["comm_s"]. Without `sync` nothing waits and comm_s stays None."""

    def __init__(self, dist, group, world: int, rank: int, sync: Callable[[], None] | None = None):
        self.dist, self.group, self.world, self.rank = dist, group, world, rank
        self._sync = sync
        self.stats = {"comm_s": 0.0 if sync else None, "payload_bytes": 0, "bytes_sent": 0.0, "selected": 0}

    def run(self, op: str, payload: int, fn, *args, **kwargs) -> None:
        """Run one collective `fn(*args, **kwargs)` of kind `op` that hands over `payload` bytes."""
        if self._sync is None:
            fn(*args, **kwargs)
        else:
            self._sync()
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            self._sync()
            self.stats["comm_s"] += time.perf_counter() - t0
        self.stats["payload_bytes"] += payload
        self.stats["bytes_sent"] += ring_bytes(op, payload, self.world)


def leader_reduce(
    x: torch.Tensor,
    wire: Wire,
    *,
    step: int,
    select: Callable[[torch.Tensor], torch.Tensor],
    topk_ratio: float,
    quant_chunk: int,
    error_feedback: bool,
    average: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Leader positions + int8 reduce-scatter (all_to_all) + int8 all-gather. Returns (dense average, new error).

    Wire per rank: positions by broadcast ((W-1)/W * n/8 bytes as a bitmap), then 2 (W-1)/W * c bytes of int8 plus
    scales, so the bytes do not grow with W. The owner of each slice of the sum re-quantizes it; its rounding
    error goes into the owner's error buffer, times W (it is averaged back by 1/W at the next step). With error
    feedback `x` itself becomes the error buffer.
    """
    dist, group, world, rank = wire.dist, wire.group, wire.world, wire.rank
    n, chunk = x.numel(), quant_chunk
    leader = step % world  # rotates, so every rank's largest residuals get their turn
    src = dist.get_global_rank(group, leader)
    fmt = C.index_format(topk_ratio)
    idx = select(x) if rank == leader else None
    if fmt == "bitmap":
        buf = C.pack_bitmap(idx, n) if rank == leader else torch.empty((n + 7) // 8, dtype=torch.uint8, device=x.device)
        wire.run("broadcast", buf.numel(), dist.broadcast, buf, src, group=group)
        if rank != leader:
            idx = C.unpack_bitmap(buf, n)
    else:
        count = torch.tensor([idx.numel() if rank == leader else 0], dtype=torch.int64, device=x.device)
        wire.run("broadcast", 8, dist.broadcast, count, src, group=group)
        buf = (
            idx.to(torch.int32)
            if rank == leader
            else torch.empty(int(count.item()), dtype=torch.int32, device=x.device)
        )
        wire.run("broadcast", 4 * buf.numel(), dist.broadcast, buf, src, group=group)
        idx = buf.long()
    c = idx.numel()
    wire.stats["selected"] += c
    p = C.padded_length(c, world * chunk)  # every owner gets `part` values, a whole number of chunks
    part = p // world
    q, scales = C.quantize_int8(F.pad(x[idx], (0, p - c)), chunk)  # (p,), (p // chunk,)
    # x is not needed after this: it becomes the error buffer
    err = C.residual(x, idx, C.dequantize_int8(q, scales, chunk)[:c], inplace=True) if error_feedback else None
    recv_q, recv_s = torch.empty_like(q), torch.empty_like(scales)
    wire.run("all_to_all", q.numel(), dist.all_to_all_single, recv_q, q, group=group)
    wire.run("all_to_all", 4 * scales.numel(), dist.all_to_all_single, recv_s, scales, group=group)
    mine = C.sum_dequantized(recv_q.view(world, part), recv_s.view(world, part // chunk), chunk)  # (part,)
    if average:
        mine /= world
    q2, s2 = C.quantize_int8(mine, chunk)
    all_q = torch.empty(p, dtype=torch.int8, device=x.device)
    all_s = torch.empty(p // chunk, dtype=torch.float32, device=x.device)
    wire.run("all_gather", q2.numel(), dist.all_gather_into_tensor, all_q, q2, group=group)
    wire.run("all_gather", 4 * s2.numel(), dist.all_gather_into_tensor, all_s, s2, group=group)
    if err is not None:
        lo, hi = rank * part, min(c, (rank + 1) * part)
        if hi > lo:
            lost = mine[: hi - lo] - C.dequantize_int8(q2, s2, chunk)[: hi - lo]
            err[idx[lo:hi]] += lost * (world if average else 1)
    out = torch.zeros(n, dtype=torch.float32, device=x.device)
    out[idx] = C.dequantize_int8(all_q, all_s, chunk)[:c]
    return out, err


def allgather_reduce(
    x: torch.Tensor,
    wire: Wire,
    *,
    select: Callable[[torch.Tensor], torch.Tensor],
    topk_ratio: float,
    quant_chunk: int,
    error_feedback: bool,
    average: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every rank's own top-k: all-gather (positions, int8 values, scales), sum in rank order. Wire per rank grows
    as (W-1) * message, like DeepSpeed's sparse_allreduce. Returns (dense average, new error)."""
    dist, group, world = wire.dist, wire.group, wire.world
    n, chunk = x.numel(), quant_chunk
    fmt = C.index_format(topk_ratio)
    idx = select(x)
    c = idx.numel()
    wire.stats["selected"] += c
    counts = torch.empty(world, dtype=torch.int64, device=x.device)
    wire.run(
        "all_gather",
        8,
        dist.all_gather_into_tensor,
        counts,
        torch.tensor([c], dtype=torch.int64, device=x.device),
        group=group,
    )
    counts_l = counts.tolist()
    p = C.padded_length(max(counts_l), chunk)
    q, scales = C.quantize_int8(F.pad(x[idx], (0, p - c)), chunk)
    err = C.residual(x, idx, C.dequantize_int8(q, scales, chunk)[:c], inplace=True) if error_feedback else None
    if fmt == "bitmap":
        ibuf = C.pack_bitmap(idx, n)
    else:
        ibuf = F.pad(idx.to(torch.int32), (0, max(counts_l) - c))
    all_i = torch.empty(world * ibuf.numel(), dtype=ibuf.dtype, device=x.device)
    all_q = torch.empty(world * p, dtype=torch.int8, device=x.device)
    all_s = torch.empty(world * scales.numel(), dtype=torch.float32, device=x.device)
    wire.run("all_gather", ibuf.numel() * ibuf.element_size(), dist.all_gather_into_tensor, all_i, ibuf, group=group)
    wire.run("all_gather", q.numel(), dist.all_gather_into_tensor, all_q, q, group=group)
    wire.run("all_gather", 4 * scales.numel(), dist.all_gather_into_tensor, all_s, scales, group=group)
    vals = C.dequantize_int8(all_q, all_s, chunk).view(world, p)
    all_i = all_i.view(world, -1)
    out = torch.zeros(n, dtype=torch.float32, device=x.device)
    for r in range(world):  # rank order, same on every rank -> bit-identical sums
        ir = C.unpack_bitmap(all_i[r], n) if fmt == "bitmap" else all_i[r, : counts_l[r]].long()
        out.index_add_(0, ir, vals[r, : counts_l[r]])
    if average:
        out /= world
    return out, err
