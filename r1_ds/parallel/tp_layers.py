"""Tensor-parallel building blocks (Megatron style): communication as autograd functions, column-
and row-parallel linear layers, a vocabulary-parallel embedding and LM head, and the vocabulary-
parallel cross entropy (with label smoothing).

Every function takes the tensor-parallel process group explicitly (DeepSpeed's grid calls it the
"slice" group); nothing here knows about pipelines, data parallelism or DeepSpeed. With a group of
size 1 (or None) every collective is the identity, so the layers also run in one process.

Activations are either *replicated* (the same tensor on every tensor rank: the residual stream) or
*sharded* (each rank holds a slice of the features: q/k/v heads, the SwiGLU hidden, the logits).
The four crossings, written as autograd functions so that forward and backward stay consistent:

    copy_to_tp       replicated -> used by sharded math   fwd identity     bwd all-reduce(sum)
    reduce_from_tp   partial sums -> replicated           fwd all-reduce   bwd identity
    gather_from_tp   sharded (last dim) -> replicated     fwd all-gather   bwd keep own slice
    scatter_to_tp    replicated -> sharded (last dim)     fwd keep slice   bwd all-gather

Sharded parameters carry ``tensor_model_parallel = True`` (read by DeepSpeed's gradient norm so they
are counted on every tensor rank, replicated ones on tensor rank 0 only), ``partition_dim`` and
``partition_stride`` (Megatron's names; `partition_stride` > 1 means the dimension is a
concatenation of that many blocks, each sliced on its own).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ColumnParallelLinear",
    "RowParallelLinear",
    "VocabParallelEmbedding",
    "VocabParallelLMHead",
    "copy_to_tp",
    "reduce_from_tp",
    "gather_from_tp",
    "scatter_to_tp",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_causal_lm_loss",
    "tp_world_size",
    "tp_rank",
    "shard_tensor",
    "merge_shards",
    "mark_tensor_parallel",
]


# ----------------------------------------------------------------------------- groups and slicing


def tp_world_size(group) -> int:
    """Ranks in the tensor-parallel group; 1 without a process group."""
    if group is None or not dist.is_initialized():
        return 1
    return dist.get_world_size(group=group)


def tp_rank(group) -> int:
    """This process's index inside the tensor-parallel group; 0 without a process group."""
    if group is None or not dist.is_initialized():
        return 0
    return dist.get_rank(group=group)


def shard_tensor(full: torch.Tensor, dim: int, rank: int, world: int, stride: int = 1) -> torch.Tensor:
    """This rank's slice of `full` along `dim`. With stride s, `dim` is s equal blocks (e.g. the gate's
    input [h1; h2; h3]); each block is cut in `world` pieces and the rank keeps piece `rank` of every
    block, concatenated. A contiguous copy, so the full tensor can be freed."""
    blocks = full.chunk(stride, dim=dim)
    return torch.cat([b.chunk(world, dim=dim)[rank] for b in blocks], dim=dim).contiguous()


def merge_shards(shards: list[torch.Tensor], dim: int, stride: int = 1) -> torch.Tensor:
    """Inverse of `shard_tensor` over all ranks (shards in tensor-rank order)."""
    per_rank = [s.chunk(stride, dim=dim) for s in shards]
    return torch.cat([torch.cat([blocks[i] for blocks in per_rank], dim=dim) for i in range(stride)], dim=dim)


def mark_tensor_parallel(param: nn.Parameter, dim: int, stride: int = 1) -> nn.Parameter:
    """Tag a sharded parameter the way DeepSpeed (and Megatron) expect."""
    param.tensor_model_parallel = True
    param.partition_dim = dim
    param.partition_stride = stride
    return param


# ----------------------------------------------------------------------------- communication


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(tp_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad):
        world, rank = tp_world_size(ctx.group), tp_rank(ctx.group)
        return grad.chunk(world, dim=-1)[rank].contiguous(), None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.chunk(tp_world_size(group), dim=-1)[tp_rank(group)].contiguous()

    @staticmethod
    def backward(ctx, grad):
        parts = [torch.empty_like(grad) for _ in range(tp_world_size(ctx.group))]
        dist.all_gather(parts, grad.contiguous(), group=ctx.group)
        return torch.cat(parts, dim=-1), None


def copy_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    """Replicated tensor entering sharded math: identity forward, all-reduce of the gradient."""
    return x if tp_world_size(group) == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    """Per-rank partial sums -> their replicated sum: all-reduce forward, identity backward."""
    return x if tp_world_size(group) == 1 else _ReduceFromTP.apply(x, group)


def gather_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    """(..., n / tp) sharded on the last dim -> (..., n) replicated."""
    return x if tp_world_size(group) == 1 else _GatherFromTP.apply(x, group)


def scatter_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    """(..., n) replicated -> this rank's (..., n / tp) slice."""
    return x if tp_world_size(group) == 1 else _ScatterToTP.apply(x, group)


# ----------------------------------------------------------------------------- layers


class ColumnParallelLinear(nn.Module):
    """y_r = x W_r^T + b_r: the output features are split, W (out, in) -> W_r (out / tp, in).

    The input is replicated. `copy_input=False` when the parent already copied it into the tensor
    region once for several projections (q/k/v, gate/up): one gradient all-reduce instead of several.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group,
        *,
        bias: bool = False,
        copy_input: bool = True,
        gather_output: bool = False,
        stride: int = 1,
        device=None,
        dtype=None,
    ):
        super().__init__()
        world = tp_world_size(group)
        if out_features % (world * stride):
            raise ValueError(
                f"ColumnParallelLinear: out_features={out_features} must be divisible by "
                f"tensor size {world} x stride {stride}; choose a tensor size that divides it"
            )
        self.group, self.copy_input, self.gather_output = group, copy_input, gather_output
        self.in_features, self.out_features = in_features, out_features
        self.out_features_per_rank = out_features // world
        self.weight = mark_tensor_parallel(
            nn.Parameter(torch.empty(self.out_features_per_rank, in_features, device=device, dtype=dtype)), 0, stride
        )
        self.bias = None
        if bias:
            self.bias = mark_tensor_parallel(
                nn.Parameter(torch.zeros(self.out_features_per_rank, device=device, dtype=dtype)), 0, stride
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.copy_input:
            x = copy_to_tp(x, self.group)
        y = F.linear(x, self.weight, self.bias)  # (..., out / tp)
        return gather_from_tp(y, self.group) if self.gather_output else y

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features} (per rank {self.out_features_per_rank}), "
            f"bias={self.bias is not None}, copy_input={self.copy_input}, gather_output={self.gather_output}"
        )


class RowParallelLinear(nn.Module):
    """y = sum_r x_r W_r^T + b: the input features are split, W (out, in) -> W_r (out, in / tp); the
    partial products are all-reduced and the (replicated) bias is added once, after the sum.

    `stride` > 1: the input is a concatenation of `stride` sharded tensors (the attention gate reads
    [h1; h2; h3], each split by heads). `feeds_sharded=True`: the replicated output is consumed by
    sharded math (the gate weighs each rank's heads), so its gradient is a per-rank partial sum and
    is all-reduced in backward.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group,
        *,
        bias: bool = False,
        input_is_parallel: bool = True,
        stride: int = 1,
        feeds_sharded: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        world = tp_world_size(group)
        if in_features % (world * stride):
            raise ValueError(
                f"RowParallelLinear: in_features={in_features} must be divisible by "
                f"tensor size {world} x stride {stride}; choose a tensor size that divides it"
            )
        self.group, self.input_is_parallel, self.feeds_sharded = group, input_is_parallel, feeds_sharded
        self.in_features, self.out_features = in_features, out_features
        self.in_features_per_rank = in_features // world
        self.weight = mark_tensor_parallel(
            nn.Parameter(torch.empty(out_features, self.in_features_per_rank, device=device, dtype=dtype)), 1, stride
        )
        # replicated: identical on every tensor rank (its gradient is the same everywhere)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tp(x, self.group)
        y = reduce_from_tp(F.linear(x, self.weight), self.group)  # (..., out) replicated
        if self.bias is not None:
            y = y + self.bias
        return copy_to_tp(y, self.group) if self.feeds_sharded else y

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features} (per rank {self.in_features_per_rank}), out={self.out_features}, "
            f"bias={self.bias is not None}, feeds_sharded={self.feeds_sharded}"
        )


class VocabParallelEmbedding(nn.Module):
    """Rows of the (V, d) table split by vocabulary: rank r holds ids [r V/tp, (r+1) V/tp). Each rank
    looks up the ids it owns (zeros elsewhere) and the partial embeddings are all-reduced."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, group, *, padding_idx: int | None = None, device=None, dtype=None
    ):
        super().__init__()
        world, rank = tp_world_size(group), tp_rank(group)
        if num_embeddings % world:
            raise ValueError(
                f"VocabParallelEmbedding: vocab size {num_embeddings} must be divisible by tensor "
                f"size {world}; pad the vocabulary (R1Config.vocab_size) to a multiple of {world}"
            )
        self.group = group
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.per_rank = num_embeddings // world
        self.vocab_start = rank * self.per_rank
        self.padding_idx = padding_idx
        # nn.Embedding's padding row gets no gradient; keep that for the rank that owns it
        own = padding_idx is not None and self.vocab_start <= padding_idx < self.vocab_start + self.per_rank
        self._local_padding_idx = padding_idx - self.vocab_start if own else None
        self.weight = mark_tensor_parallel(
            nn.Parameter(torch.empty(self.per_rank, embedding_dim, device=device, dtype=dtype)), 0
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if tp_world_size(self.group) == 1:
            return F.embedding(input_ids, self.weight, self._local_padding_idx)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight, self._local_padding_idx)
        out = out.masked_fill(outside[..., None], 0.0)  # (B, T, d) partial: only the ids this rank owns
        return reduce_from_tp(out, self.group)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim} (rows {self.vocab_start}..+{self.per_rank})"


class VocabParallelLMHead(nn.Module):
    """logits_r = x W_r^T with W (V, d) split by vocabulary rows, as the embedding (so a tied weight is
    one shared shard). Returns this rank's (B, T, V / tp) logits: feed them to
    `vocab_parallel_causal_lm_loss`, or build with `gather_output=True` for full logits (generation)."""

    def __init__(
        self, in_features: int, vocab_size: int, group, *, gather_output: bool = False, device=None, dtype=None
    ):
        super().__init__()
        world, rank = tp_world_size(group), tp_rank(group)
        if vocab_size % world:
            raise ValueError(
                f"VocabParallelLMHead: vocab size {vocab_size} must be divisible by tensor size "
                f"{world}; pad the vocabulary (R1Config.vocab_size) to a multiple of {world}"
            )
        self.group, self.gather_output = group, gather_output
        self.in_features, self.out_features = in_features, vocab_size
        self.per_rank = vocab_size // world
        self.vocab_start = rank * self.per_rank
        self.weight = mark_tensor_parallel(
            nn.Parameter(torch.empty(self.per_rank, in_features, device=device, dtype=dtype)), 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.linear(copy_to_tp(x, self.group), self.weight)  # (B, T, V / tp)
        return gather_from_tp(logits, self.group) if self.gather_output else logits

    def extra_repr(self) -> str:
        return f"in={self.in_features}, vocab={self.out_features} (rows {self.vocab_start}..+{self.per_rank})"


# ----------------------------------------------------------------------------- loss


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token label-smoothed cross entropy over logits split by vocabulary, equal to
    F.cross_entropy(full_logits, target, label_smoothing=eps, reduction="none"):
        loss = (1 - eps) (logZ - z_y) + eps (logZ - mean_j z_j)
    Two all-reduces: the (N,) max, then [sum exp, z_y, sum z] stacked as (3, N); the (N, V / tp)
    logits never leave the rank. Ignored targets give 0 loss and 0 gradient."""

    @staticmethod
    def forward(ctx, logits, target, vocab_start, vocab_size, group, eps, ignore_index):
        z = logits.float()  # (N, V / tp)
        n_local = z.shape[-1]
        zmax = z.max(dim=-1).values
        dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=group)
        z = z - zmax[:, None]  # a new tensor; the caller's logits stay untouched
        local_t = target - vocab_start
        ours = (local_t >= 0) & (local_t < n_local)
        local_t = local_t.clamp(0, n_local - 1)
        exp = z.exp()
        stats = torch.stack([exp.sum(-1), z.gather(-1, local_t[:, None])[:, 0] * ours, z.sum(-1)])  # (3, N)
        dist.all_reduce(stats, group=group)
        sum_exp, z_y, sum_z = stats
        log_z = sum_exp.log()
        loss = (1.0 - eps) * (log_z - z_y) + eps * (log_z - sum_z / vocab_size)
        keep = target != ignore_index
        loss = loss * keep
        softmax = exp.div_(sum_exp[:, None])  # reuse the buffer: (N, V / tp)
        ctx.save_for_backward(softmax, local_t, ours, keep)
        ctx.eps, ctx.vocab_size, ctx.dtype = eps, vocab_size, logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_t, ours, keep = ctx.saved_tensors
        eps = ctx.eps
        grad = softmax - eps / ctx.vocab_size  # d loss / d z_j, before the target term
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows, local_t] -= (1.0 - eps) * ours.to(grad.dtype)
        grad *= (grad_loss * keep)[:, None]
        return grad.to(ctx.dtype), None, None, None, None, None, None


def vocab_parallel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    vocab_start: int,
    vocab_size: int,
    group,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Per-token loss (N,) from this rank's logits (N, V / tp); 0 at ignored targets."""
    if tp_world_size(group) == 1:
        return F.cross_entropy(
            logits.float(), target, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none"
        )
    return _VocabParallelCrossEntropy.apply(
        logits, target, vocab_start, vocab_size, group, label_smoothing, ignore_index
    )


def vocab_parallel_causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    vocab_start: int,
    vocab_size: int,
    group,
    label_smoothing: float = 0.1,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """`r1_ds.model.causal_lm_loss` over logits split by vocabulary: logits (B, T, V / tp), labels (B, T)
    unshifted. The mean over non-ignored tokens, or the sum / num_items_in_batch (gradient accumulation)."""
    logits = logits[:, :-1]
    labels = labels[:, 1:].to(logits.device)
    per_token = vocab_parallel_cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        vocab_start=vocab_start,
        vocab_size=vocab_size,
        group=group,
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
    )
    if num_items_in_batch is not None:
        return per_token.sum() / num_items_in_batch
    return per_token.sum() / (labels != ignore_index).sum()
