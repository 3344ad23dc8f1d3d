"""Symmetric InfoNCE with masked rows and negatives gathered over a data-parallel group (plain torch).

    L(a -> b) = -1/N sum_i log( exp(s * a_i.b_i) / sum_j exp(s * a_i.b_j) ),   s = 1 / temperature

over the N rows that hold both modalities; the symmetric loss is (L(a -> b) + L(b -> a)) / 2. Under data
parallelism each rank scores its own rows against the columns of every rank, gathered with their gradients
(open_clip's `gather_features(..., gather_with_grad=True)`); see `info_nce` for how the loss is scaled so that
DeepSpeed's gradient average equals the one-process gradient of the concatenated batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class _GatherRows(torch.autograd.Function):
    """all_gather forward; backward sums the gradient of the gathered rows over the ranks and keeps this rank's
    slice (what torch.distributed.nn.functional.all_gather does, without its deprecation, and on gloo)."""

    @staticmethod
    def forward(ctx, x, group):
        import torch.distributed as dist

        ctx.group, ctx.rows = group, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)  # every rank's loss reaches every rank's rows
        start = dist.get_rank(ctx.group) * ctx.rows
        return grad[start : start + ctx.rows], None


def gather_rows(x: torch.Tensor, group) -> torch.Tensor:
    """Rows of every rank of `group`, in rank order, with gradients flowing back to each rank's own rows."""
    return _GatherRows.apply(x, group)


def gather_rows_no_grad(x: torch.Tensor, group) -> torch.Tensor:
    """Rows of every rank of `group`, in rank order (no gradient: masks, MINE inputs, metrics)."""
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts)


def group_size(group) -> int:
    import torch.distributed as dist

    if group is None or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    mask: torch.Tensor | None = None,
    symmetric: bool = True,
    group=None,
) -> torch.Tensor:
    """InfoNCE between paired features `a` (N, D) and `b` (N, D): row i of `a` matches row i of `b`.

    logit_scale: s = 1 / temperature (a tensor keeps its gradient). mask: (N,) bool, rows holding both
    modalities; the others are neither queries nor negatives. symmetric: average of a->b and b->a.
    group: a data-parallel process group; with more than one rank, negatives come from every rank (all ranks
    must pass the same N) and the result is `world * (sum of this rank's row losses) / (valid rows of all
    ranks)`. Summed over ranks that is `world` times the loss of one process over the concatenated batch, so
    the data-parallel gradient average gives exactly that process's gradient (open_clip's ClipLoss gets the same
    with a per-rank mean, for equal row counts). Features are used as given (normalise them first for cosine).
    A batch without a valid row gives a zero that keeps the graph.
    """
    n = a.shape[0]
    if b.shape[0] != n:
        raise ValueError(f"info_nce: a has {n} rows, b has {b.shape[0]}")
    mask = torch.ones(n, dtype=torch.bool, device=a.device) if mask is None else mask.to(torch.bool)
    world = group_size(group)
    if world > 1:
        import torch.distributed as dist

        all_a, all_b = gather_rows(a, group), gather_rows(b, group)
        all_mask = gather_rows_no_grad(mask.to(torch.uint8), group).to(torch.bool)
        if all_a.shape[0] != n * world:
            raise ValueError("info_nce: every data-parallel rank must pass the same number of rows")
        offset = dist.get_rank(group) * n
    else:
        all_a, all_b, all_mask, offset = a, b, mask, 0
    cols = all_mask.nonzero().squeeze(1)
    rows = mask.nonzero().squeeze(1)
    if cols.numel() == 0:
        return (a.sum() + b.sum()) * 0.0
    labels = (torch.cumsum(all_mask.long(), 0) - 1)[rows + offset]  # match of each row among the valid columns
    # logits in fp32 whatever the training dtype: a bf16 softmax over a few hundred columns loses the target's share
    loss = F.cross_entropy((logit_scale * a[rows] @ all_b[cols].T).float(), labels, reduction="sum")
    if symmetric:
        loss_ba = F.cross_entropy((logit_scale * b[rows] @ all_a[cols].T).float(), labels, reduction="sum")
        loss = (loss + loss_ba) / 2
    return loss * (world / cols.numel())


def bounded_logit_scale(log_scale: torch.Tensor, *, min_scale: float, max_scale: float) -> torch.Tensor:
    """exp(log_scale) clamped to [min_scale, max_scale] inside the forward (ImageBind's LearnableLogitScaling).

    Clamped here rather than in place after the step (open_clip): DeepSpeed keeps fp32 master weights, which an
    in-place clamp of the model copy would not reach. Outside the bounds the gradient is zero."""
    return log_scale.exp().clamp(min=min_scale, max=max_scale)


def infonce_bound(loss: float, n: int) -> float:
    """log N - L: the mutual-information lower bound that an InfoNCE loss L over N candidates certifies."""
    return math.log(max(n, 1)) - loss
