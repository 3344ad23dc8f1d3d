"""Tensor parallelism for R1, applied from outside the model: `apply_tensor_parallel` shards an
already-initialised full model in place, following the plan declared as data in
`r1_ds.parallel.tp_plan` (R1_TP_PLAN).

    group = tensor_parallel_group(dims)                 # the tensor ranks of this (pipe, data) slot
    apply_tensor_parallel(model, group)                 # R1_TP_PLAN; before deepspeed.initialize

Slicing the full, initialised weights (rather than initialising shards) makes every rank's result
equal the one-process model, which is what the tests check. The inverse (merging shards for export)
and the pattern lists `ds_to_universal` needs live in `r1_ds.parallel.state_dict_mapping`.

How the attention splits (each level's heads over tensor ranks; see docs/parallelism.md):
q/k/v are column-parallel, so rank r holds the columns [r d/tp, (r+1) d/tp) of q, k and v. A level
with H heads views those columns as its heads [r H/tp, (r+1) H/tp), of unchanged size d/H, for all
three levels at once; the kernels run unchanged on the local width with H/tp heads (per-head
routing included). The gate reads [h1; h2; h3]: each rank multiplies its three column slices by
the matching columns of W_g (a row-parallel layer over a 3-block input), the (B, T, 8) (3 gate rows + 5 alignment rows)
pre-activations are all-reduced and b_g added once, so alpha is the same on every rank. o_proj is
row-parallel. Norms, b_g and the residual stream are replicated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from r1_ds.model.modeling_r1 import R1ForCausalLM, R1HierarchicalAttention, R1LevelGate, causal_lm_loss

from .topology import TensorParallelError, check_tensor_parallel
from .tp_layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    VocabParallelLMHead,
    copy_to_tp,
    shard_tensor,
    tp_rank,
    tp_world_size,
    vocab_parallel_causal_lm_loss,
)
from .tp_plan import R1_TP_PLAN, join_name, plan_matcher

__all__ = [
    "STYLES",
    "TensorParallelHierarchicalAttention",
    "TensorParallelR1ForCausalLM",
    "apply_tensor_parallel",
    "forget_groups",
    "tensor_parallel_group",
    "tensor_parallel_loss_fn",
]

# ----------------------------------------------------------------------------- validation


def _check_config(config, tensor: int) -> None:
    if tensor > 1 and config.l2_research:
        raise TensorParallelError(
            f"R1Config l2_routing={config.l2_routing!r}, l2_projections={config.l2_projections!r} are research "
            f"options of the eager reference, not sharded over {tensor} tensor-parallel ranks. Fix: tensor=1, or "
            f"keep the defaults (l2_routing='paragraph', l2_projections='shared')."
        )
    check_tensor_parallel(
        tensor=tensor,
        level_heads=config.level_heads,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
    )


# ----------------------------------------------------------------------------- module overrides


class TensorParallelHierarchicalAttention(R1HierarchicalAttention):
    """R1's attention on this rank's heads of every level (the class of an attention module after the
    "hierarchical_attention" style). Only two things change: the kernels get the local head counts,
    and the input is copied into the tensor region once for q, k and v. `fuse` is the model's own:
    the gate and o_proj modules are the parallel ones."""

    tp_group = None
    local_level_heads: tuple[int, int, int] = ()

    def kernel_kwargs(self) -> dict:
        return {**super().kernel_kwargs(), "level_heads": self.local_level_heads}

    def levels(self, x: torch.Tensor, past_key_values=None, layout=None):
        return super().levels(copy_to_tp(x, self.tp_group), past_key_values, layout)  # each (B, T, d / tp)


class TensorParallelLevelGate(RowParallelLinear):
    """The level gate as a row shard, called like R1LevelGate: h1, h2, h3 (this rank's columns of each)
    in, the 3 used logits out (the stored alignment rows are sliced away)."""

    def forward(self, *levels: torch.Tensor) -> torch.Tensor:
        return super().forward(R1LevelGate.gate_input(levels))[..., : R1LevelGate.rows]


class TensorParallelR1ForCausalLM(R1ForCausalLM):
    """R1ForCausalLM whose LM head returns vocabulary-sharded logits: the loss is the vocabulary-parallel
    cross entropy (same value as `causal_lm_loss` on the full logits, label smoothing included)."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        labels=None,
        past_key_values=None,
        use_cache=None,
        logits_to_keep: int = 0,
        num_items_in_batch=None,
        **kwargs,
    ):
        out = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if labels is not None:
            out.loss = tensor_parallel_loss_fn(self.lm_head, self.config.label_smoothing)(
                out.logits, labels, num_items_in_batch=num_items_in_batch
            )
        return out


def tensor_parallel_loss_fn(lm_head: nn.Module, label_smoothing: float) -> Callable:
    """`loss(logits, labels, num_items_in_batch=None)` for the logits `lm_head` returns: the
    vocabulary-parallel loss for a sharded head, `causal_lm_loss` otherwise (also for a pipeline's
    last stage)."""
    if isinstance(lm_head, VocabParallelLMHead) and not lm_head.gather_output:

        def loss(logits, labels, num_items_in_batch=None):
            return vocab_parallel_causal_lm_loss(
                logits,
                labels,
                vocab_start=lm_head.vocab_start,
                vocab_size=lm_head.out_features,
                group=lm_head.group,
                label_smoothing=label_smoothing,
                num_items_in_batch=num_items_in_batch,
            )

        return loss

    def loss(logits, labels, num_items_in_batch=None):
        return causal_lm_loss(logits, labels, label_smoothing, num_items_in_batch)

    return loss


# ----------------------------------------------------------------------------- styles


@dataclass
class _Ctx:
    group: object
    world: int
    rank: int
    parent_style: str | None  # style of the parent module, if the plan names it
    shared: dict  # id(full parameter) -> its shard, so tied weights stay one parameter


def _require(module, cls, style, name):
    if not isinstance(module, cls):
        raise TensorParallelError(
            f"plan style {style!r} at {name!r} needs a {cls.__name__}, found "
            f"{type(module).__name__}. Fix: point the plan entry at the right module"
        )


def _shard_param(full: nn.Parameter, ctx: _Ctx, dim: int, stride: int = 1) -> nn.Parameter:
    key = id(full)
    if key not in ctx.shared:
        ctx.shared[key] = nn.Parameter(
            shard_tensor(full.data, dim, ctx.rank, ctx.world, stride), requires_grad=full.requires_grad
        )
    return ctx.shared[key]


def _colwise(m: nn.Linear, name: str, ctx: _Ctx) -> nn.Module:
    _require(m, nn.Linear, "colwise", name)
    new = ColumnParallelLinear(
        m.in_features,
        m.out_features,
        ctx.group,
        bias=m.bias is not None,
        copy_input=ctx.parent_style not in _COPIES_INPUT,
        device="meta",
    )
    new.weight = _keep_marks(new.weight, _shard_param(m.weight, ctx, 0))
    if m.bias is not None:
        new.bias = _keep_marks(new.bias, _shard_param(m.bias, ctx, 0))
    return new


def _rowwise(
    m: nn.Linear,
    name: str,
    ctx: _Ctx,
    *,
    stride: int = 1,
    feeds_sharded: bool = False,
    cls: type[RowParallelLinear] = RowParallelLinear,
) -> nn.Module:
    _require(m, R1LevelGate if cls is TensorParallelLevelGate else nn.Linear, "rowwise", name)
    new = cls(
        m.in_features,
        m.out_features,
        ctx.group,
        bias=m.bias is not None,
        stride=stride,
        feeds_sharded=feeds_sharded,
        device="meta",
    )
    new.weight = _keep_marks(new.weight, _shard_param(m.weight, ctx, 1, stride))
    if m.bias is not None:
        new.bias = m.bias  # replicated: the same parameter, untouched
    return new


def _gate(m: nn.Linear, name: str, ctx: _Ctx) -> nn.Module:
    if m.in_features % 3:
        raise TensorParallelError(
            f"plan style 'gate' at {name!r}: in_features={m.in_features} is not three "
            "blocks [h1; h2; h3]. Fix: use 'gate' only for the attention's level gate"
        )
    return _rowwise(m, name, ctx, stride=3, feeds_sharded=True, cls=TensorParallelLevelGate)


def _vocab(m: nn.Module, name: str, ctx: _Ctx, *, gather_output: bool = False) -> nn.Module:
    if isinstance(m, nn.Embedding):
        new = VocabParallelEmbedding(
            m.num_embeddings, m.embedding_dim, ctx.group, padding_idx=m.padding_idx, device="meta"
        )
    else:
        _require(m, nn.Linear, "vocab", name)
        if m.bias is not None:
            raise TensorParallelError(
                f"plan style 'vocab' at {name!r}: an LM head with a bias is not supported. "
                "Fix: build the head with bias=False"
            )
        new = VocabParallelLMHead(m.in_features, m.out_features, ctx.group, gather_output=gather_output, device="meta")
    new.weight = _keep_marks(new.weight, _shard_param(m.weight, ctx, 0))
    return new


def _vocab_gather(m, name, ctx):
    _require(m, nn.Linear, "vocab_gather", name)
    return _vocab(m, name, ctx, gather_output=True)


def _hierarchical_attention(m: R1HierarchicalAttention, name: str, ctx: _Ctx) -> nn.Module:
    _require(m, R1HierarchicalAttention, "hierarchical_attention", name)
    _check_config(m.config, ctx.world)
    m.__class__ = TensorParallelHierarchicalAttention
    m.tp_group = ctx.group
    m.local_level_heads = tuple(h // ctx.world for h in m.config.level_heads)
    return m


class _CopyInputHook:
    """Forward pre-hook: the module's first positional input enters the tensor region (copy_to_tp)."""

    def __init__(self, group):
        self.group = group

    def __call__(self, module, args):
        return (copy_to_tp(args[0], self.group), *args[1:])


def _parallel_input(m: nn.Module, name: str, ctx: _Ctx) -> nn.Module:
    m.register_forward_pre_hook(_CopyInputHook(ctx.group))
    return m


def _vocab_parallel_loss(m: nn.Module, name: str, ctx: _Ctx) -> nn.Module:
    _require(m, R1ForCausalLM, "vocab_parallel_loss", name)
    m.__class__ = TensorParallelR1ForCausalLM
    return m


def _keep_marks(template: nn.Parameter, shard: nn.Parameter) -> nn.Parameter:
    """Give `shard` the tensor_model_parallel / partition_dim / partition_stride tags of the layer's own
    parameter (the layer built them from its constructor arguments)."""
    for attr in ("tensor_model_parallel", "partition_dim", "partition_stride"):
        if hasattr(template, attr):
            setattr(shard, attr, getattr(template, attr))
    return shard


# style -> apply(module, its HF name, ctx) -> the module to put in its place; what each style does and which
# parameters it shards: r1_ds.parallel.tp_plan.STYLE_SHARDING
STYLES: dict[str, Callable] = {
    "colwise": _colwise,
    "rowwise": _rowwise,
    "gate": _gate,
    "vocab": _vocab,
    "vocab_gather": _vocab_gather,
    "hierarchical_attention": _hierarchical_attention,
    "parallel_input": _parallel_input,
    "vocab_parallel_loss": _vocab_parallel_loss,
}
_COPIES_INPUT = ("hierarchical_attention", "parallel_input")


# ----------------------------------------------------------------------------- groups

_GROUPS: dict[tuple[int, int, int], tuple[object, object]] = {}  # layout -> (world group made under, my group)


def tensor_parallel_group(dims):
    """This rank's tensor-parallel process group for a layout (`r1_ds.parallel.topology.ParallelDims`):
    the `dims.tensor` consecutive ranks of its (pipe, data) slot, the same ranks as DeepSpeed's
    `PipelineParallelGrid.get_slice_parallel_group()`. Needed before the PipelineModule (and its grid)
    exists. Every rank must call it (group creation is collective); later calls reuse the groups.
    None for tensor = 1."""
    if dims.tensor == 1:
        return None
    # a new world group (a second run in one process) needs new groups; the entry holds the world group it
    # was made under, so the identity check cannot be fooled by a reused id
    key, world = (dims.pipe, dims.tensor, dims.data), dist.group.WORLD
    if key not in _GROUPS or _GROUPS[key][0] is not world:
        me = dist.get_rank()
        mine = None
        for pipe in range(dims.pipe):
            for data in range(dims.data):
                ranks = [dims.rank(pipe=pipe, data=data, tensor=t) for t in range(dims.tensor)]
                group = dist.new_group(ranks)
                if me in ranks:
                    mine = group
        _GROUPS[key] = (world, mine)
    return _GROUPS[key][1]


def forget_groups() -> None:
    """Drop the cached groups, before the process groups are destroyed: a cached group kept alive past
    that is freed during the interpreter's teardown (see r1_ds.distributed.exit_process)."""
    _GROUPS.clear()


# ----------------------------------------------------------------------------- apply


def apply_tensor_parallel(
    model: nn.Module, group, plan: dict[str, str] = R1_TP_PLAN, *, prefix: str = "", config=None
) -> dict[str, str]:
    """Shard `model` in place for this rank of the tensor-parallel `group`, following `plan`.

    `model` is an initialised full model (or a part of one, e.g. a pipeline stage's layer: `prefix` is
    then its HF name, e.g. "model.layers.3", so the plan's HF names match). Full weights are sliced,
    so the result equals the one-process model. Tied weights (embedding / LM head) stay one parameter.
    `config` (an R1Config) is checked for divisibility; it defaults to `model.config` when present.
    Call before `deepspeed.initialize` and before building the optimizer.
    Returns {module name: style} of what was applied.
    """
    world, rank = tp_world_size(group), tp_rank(group)
    config = config if config is not None else getattr(model, "config", None)
    if config is not None:
        _check_config(config, world)
    style_of = plan_matcher(plan)
    named = dict(model.named_modules())  # pre-order: a parent comes before its children
    applied: dict[str, str] = {}
    shared: dict[int, nn.Parameter] = {}
    for name, module in named.items():
        full_name = join_name(prefix, name)
        style = style_of(full_name)
        if style is None:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent_style = applied.get(join_name(prefix, parent_name)) if name else None
        ctx = _Ctx(group=group, world=world, rank=rank, parent_style=parent_style, shared=shared)
        new = STYLES[style](module, full_name, ctx)
        if new is not module:
            if not name:
                raise TensorParallelError(f"plan style {style!r} cannot replace the root module {full_name!r}")
            setattr(named[parent_name] if parent_name else model, leaf, new)
        applied[full_name] = style
    return applied
