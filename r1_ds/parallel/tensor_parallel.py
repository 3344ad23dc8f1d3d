"""Tensor parallelism for R1, applied from outside the model: a plan declared as data, and
`apply_tensor_parallel` that shards an already-initialised full model in place.

    group = grid.get_slice_parallel_group()            # the tensor ranks of this (pipe, data) slot
    apply_tensor_parallel(model, group)                 # R1_TP_PLAN; before deepspeed.initialize

Slicing the full, initialised weights (rather than initialising shards) makes every rank's result
equal the one-process model, which is what the tests check. `merge_tensor_parallel_state_dicts` is
the inverse (for export), and `universal_checkpoint_info` gives `ds_to_universal` the pattern lists
it needs to merge tensor shards of a DeepSpeed checkpoint.

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

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from r1_ds.model.modeling_r1 import R1ForCausalLM, R1HierarchicalAttention, R1LevelGate, causal_lm_loss

from .tp_layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    VocabParallelLMHead,
    copy_to_tp,
    merge_shards,
    shard_tensor,
    tp_rank,
    tp_world_size,
    vocab_parallel_causal_lm_loss,
)

__all__ = [
    "R1_TP_PLAN", "STYLES", "TensorParallelError", "apply_tensor_parallel", "check_tensor_parallel",
    "merge_tensor_parallel_state_dicts", "shard_state_dict", "param_sharding", "universal_checkpoint_info",
    "TensorParallelHierarchicalAttention", "TensorParallelR1ForCausalLM", "tensor_parallel_group",
    "tensor_parallel_loss_fn",
]

# Module name (HF names; `*` is one name component) -> style. Styles are documented in STYLES below.
R1_TP_PLAN: dict[str, str] = {
    "": "vocab_parallel_loss",  # the model itself: its loss reads the vocabulary-sharded logits
    "model.embed_tokens": "vocab",
    "model.layers.*.self_attn": "hierarchical_attention",
    "model.layers.*.self_attn.q_proj": "colwise",
    "model.layers.*.self_attn.k_proj": "colwise",
    "model.layers.*.self_attn.v_proj": "colwise",
    "model.layers.*.self_attn.gate": "gate",
    "model.layers.*.self_attn.o_proj": "rowwise",
    "model.layers.*.mlp": "parallel_input",
    "model.layers.*.mlp.gate_proj": "colwise",
    "model.layers.*.mlp.up_proj": "colwise",
    "model.layers.*.mlp.down_proj": "rowwise",
    "lm_head": "vocab",
}


class TensorParallelError(ValueError):
    """The tensor size, the model and the plan do not fit; the message names the input, the rule and a fix."""


# ----------------------------------------------------------------------------- validation


def check_tensor_parallel(*, tensor: int, level_heads, hidden_size: int, intermediate_size: int,
                          vocab_size: int) -> None:
    """Every size that tensor parallelism splits must be divisible by the tensor size `tensor`."""
    if not isinstance(tensor, int) or tensor < 1:
        raise TensorParallelError(f"tensor parallel size {tensor!r}: must be an integer >= 1. Fix: set tensor to 1, "
                                  "2, 4, ... (a divisor of every level's head count)")
    if tensor == 1:
        return
    problems = []
    for i, h in enumerate(level_heads):
        if h % tensor:
            problems.append(f"level {i + 1} has {h} heads (level_heads={list(level_heads)}), not divisible by "
                            f"tensor={tensor}: each level's heads are split across tensor ranks")
    if hidden_size % tensor:
        problems.append(f"hidden_size={hidden_size} is not divisible by tensor={tensor}")
    if intermediate_size % tensor:
        problems.append(f"intermediate_size={intermediate_size} is not divisible by tensor={tensor} "
                        "(the SwiGLU hidden is split)")
    if vocab_size % tensor:
        problems.append(f"vocab_size={vocab_size} is not divisible by tensor={tensor} (embedding and LM head "
                        f"are split by vocabulary); pad it to a multiple of {tensor} (64 or 128 is usual)")
    if problems:
        divisors = [t for t in range(1, max(level_heads) + 1)
                    if all(h % t == 0 for h in level_heads) and hidden_size % t == 0
                    and intermediate_size % t == 0 and vocab_size % t == 0]
        raise TensorParallelError(
            "tensor parallel size does not fit the model:\n  - " + "\n  - ".join(problems)
            + f"\nFix: use a tensor size in {divisors} or change the model sizes named above.")


def _check_config(config, tensor: int) -> None:
    check_tensor_parallel(tensor=tensor, level_heads=config.level_heads, hidden_size=config.hidden_size,
                          intermediate_size=config.intermediate_size, vocab_size=config.vocab_size)


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

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, past_key_values=None,
                use_cache=None, logits_to_keep: int = 0, num_items_in_batch=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                              past_key_values=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep,
                              **kwargs)
        if labels is not None:
            out.loss = tensor_parallel_loss_fn(self.lm_head, self.config.label_smoothing)(
                out.logits, labels, num_items_in_batch=num_items_in_batch)
        return out


def tensor_parallel_loss_fn(lm_head: nn.Module, label_smoothing: float) -> Callable:
    """`loss(logits, labels, num_items_in_batch=None)` for the logits `lm_head` returns: the
    vocabulary-parallel loss for a sharded head, `causal_lm_loss` otherwise (also for a pipeline's
    last stage)."""
    if isinstance(lm_head, VocabParallelLMHead) and not lm_head.gather_output:
        def loss(logits, labels, num_items_in_batch=None):
            return vocab_parallel_causal_lm_loss(
                logits, labels, vocab_start=lm_head.vocab_start, vocab_size=lm_head.out_features,
                group=lm_head.group, label_smoothing=label_smoothing, num_items_in_batch=num_items_in_batch)
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
        raise TensorParallelError(f"plan style {style!r} at {name!r} needs a {cls.__name__}, found "
                                  f"{type(module).__name__}. Fix: point the plan entry at the right module")


def _shard_param(full: nn.Parameter, ctx: _Ctx, dim: int, stride: int = 1) -> nn.Parameter:
    key = id(full)
    if key not in ctx.shared:
        ctx.shared[key] = nn.Parameter(shard_tensor(full.data, dim, ctx.rank, ctx.world, stride),
                                       requires_grad=full.requires_grad)
    return ctx.shared[key]


def _colwise(m: nn.Linear, name: str, ctx: _Ctx) -> nn.Module:
    _require(m, nn.Linear, "colwise", name)
    new = ColumnParallelLinear(m.in_features, m.out_features, ctx.group, bias=m.bias is not None,
                               copy_input=ctx.parent_style not in _COPIES_INPUT, device="meta")
    new.weight = _keep_marks(new.weight, _shard_param(m.weight, ctx, 0))
    if m.bias is not None:
        new.bias = _keep_marks(new.bias, _shard_param(m.bias, ctx, 0))
    return new


def _rowwise(m: nn.Linear, name: str, ctx: _Ctx, *, stride: int = 1, feeds_sharded: bool = False,
             cls: type[RowParallelLinear] = RowParallelLinear) -> nn.Module:
    _require(m, R1LevelGate if cls is TensorParallelLevelGate else nn.Linear, "rowwise", name)
    new = cls(m.in_features, m.out_features, ctx.group, bias=m.bias is not None, stride=stride,
              feeds_sharded=feeds_sharded, device="meta")
    new.weight = _keep_marks(new.weight, _shard_param(m.weight, ctx, 1, stride))
    if m.bias is not None:
        new.bias = m.bias  # replicated: the same parameter, untouched
    return new


def _gate(m: nn.Linear, name: str, ctx: _Ctx) -> nn.Module:
    if m.in_features % 3:
        raise TensorParallelError(f"plan style 'gate' at {name!r}: in_features={m.in_features} is not three "
                                  "blocks [h1; h2; h3]. Fix: use 'gate' only for the attention's level gate")
    return _rowwise(m, name, ctx, stride=3, feeds_sharded=True, cls=TensorParallelLevelGate)


def _vocab(m: nn.Module, name: str, ctx: _Ctx, *, gather_output: bool = False) -> nn.Module:
    if isinstance(m, nn.Embedding):
        new = VocabParallelEmbedding(m.num_embeddings, m.embedding_dim, ctx.group, padding_idx=m.padding_idx,
                                     device="meta")
    else:
        _require(m, nn.Linear, "vocab", name)
        if m.bias is not None:
            raise TensorParallelError(f"plan style 'vocab' at {name!r}: an LM head with a bias is not supported. "
                                      "Fix: build the head with bias=False")
        new = VocabParallelLMHead(m.in_features, m.out_features, ctx.group, gather_output=gather_output,
                                  device="meta")
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


# style -> (apply(module, name, ctx) -> module, {parameter name: (dim, stride)} of its sharded parameters)
STYLES: dict[str, tuple[Callable, dict[str, tuple[int, int]]]] = {
    # nn.Linear, output features split; the input is copied into the tensor region unless the parent did it
    "colwise": (_colwise, {"weight": (0, 1), "bias": (0, 1)}),
    # nn.Linear, input features split; partial outputs all-reduced, bias (replicated) added once
    "rowwise": (_rowwise, {"weight": (1, 1)}),
    # the level gate nn.Linear(3d, 8) (3 rows used): row-parallel over [h1; h2; h3] (3 blocks), bias once; its output
    # weighs sharded heads, so its gradient is all-reduced in backward
    "gate": (_gate, {"weight": (1, 3)}),
    # nn.Embedding or LM-head nn.Linear, split by vocabulary rows; the head returns sharded logits
    "vocab": (_vocab, {"weight": (0, 1)}),
    # LM head split by vocabulary, logits all-gathered (generation; costs a (B, T, V) gather)
    "vocab_gather": (_vocab_gather, {"weight": (0, 1)}),
    # R1HierarchicalAttention: local head counts for the kernels, input copied in once for q/k/v
    "hierarchical_attention": (_hierarchical_attention, {}),
    # any module: its first input is copied into the tensor region once, for all its colwise children
    "parallel_input": (_parallel_input, {}),
    # R1ForCausalLM: the loss reads the vocabulary-sharded logits of a "vocab" lm_head
    "vocab_parallel_loss": (_vocab_parallel_loss, {}),
}
_COPIES_INPUT = ("hierarchical_attention", "parallel_input")


# ----------------------------------------------------------------------------- plan matching


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + r"[^.]+".join(re.escape(p) for p in pattern.split("*")) + "$")


def _matcher(plan: dict[str, str]) -> Callable[[str], str | None]:
    for key, style in plan.items():
        if style not in STYLES:
            raise TensorParallelError(f"plan entry {key!r}: unknown style {style!r}. Fix: use one of {sorted(STYLES)}")
    compiled = [(_compile(k), k, s) for k, s in plan.items()]

    def style_of(name: str) -> str | None:
        hits = [(k, s) for rx, k, s in compiled if rx.match(name)]
        if len(hits) > 1:
            raise TensorParallelError(f"module {name!r} matches several plan entries {hits}. Fix: make the "
                                      "plan's patterns disjoint")
        return hits[0][1] if hits else None

    return style_of


def _join(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


def param_sharding(name: str, plan: dict[str, str] = R1_TP_PLAN, prefix: str = "") -> tuple[int, int] | None:
    """(dim, stride) along which parameter `name` (e.g. "model.layers.0.self_attn.gate.weight") is sharded
    under `plan`, or None if it is replicated on every tensor rank."""
    style_of = _matcher(plan)
    module, _, leaf = _join(prefix, name).rpartition(".")
    style = style_of(module)
    return STYLES[style][1].get(leaf) if style else None


# ----------------------------------------------------------------------------- groups

_GROUPS: dict[tuple[int, int, int], tuple[object, object]] = {}  # layout -> (world group made under, my group)


def tensor_parallel_group(dims):
    """This rank's tensor-parallel process group for a layout (`r1_ds.parallel.topology.ParallelDims`):
    the `dims.tensor` consecutive ranks of its (pipe, data) slot, the same ranks as DeepSpeed's
    `PipelineParallelGrid.get_slice_parallel_group()`. Needed before the PipelineModule (and its grid)
    exists. Every rank must call it (group creation is collective); later calls reuse the groups.
    None for tensor = 1."""
    import torch.distributed as dist

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


def apply_tensor_parallel(model: nn.Module, group, plan: dict[str, str] = R1_TP_PLAN, *, prefix: str = "",
                          config=None) -> dict[str, str]:
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
    style_of = _matcher(plan)
    named = dict(model.named_modules())  # pre-order: a parent comes before its children
    applied: dict[str, str] = {}
    shared: dict[int, nn.Parameter] = {}
    for name, module in named.items():
        full_name = _join(prefix, name)
        style = style_of(full_name)
        if style is None:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent_style = applied.get(_join(prefix, parent_name)) if name else None
        ctx = _Ctx(group=group, world=world, rank=rank, parent_style=parent_style, shared=shared)
        new = STYLES[style][0](module, full_name, ctx)
        if new is not module:
            if not name:
                raise TensorParallelError(f"plan style {style!r} cannot replace the root module {full_name!r}")
            setattr(named[parent_name] if parent_name else model, leaf, new)
        applied[full_name] = style
    return applied


# ----------------------------------------------------------------------------- state dicts


def merge_tensor_parallel_state_dicts(state_dicts: list[dict[str, torch.Tensor]], plan: dict[str, str] = R1_TP_PLAN,
                                      *, prefix: str = "", check_replicated: bool = True) -> dict[str, torch.Tensor]:
    """The full state dict from the per-tensor-rank state dicts (in tensor-rank order). Sharded entries are
    concatenated (respecting strides); replicated entries are taken from rank 0 and, with
    `check_replicated`, must be equal on every rank (a difference means the ranks drifted apart)."""
    if not state_dicts:
        raise TensorParallelError("merge_tensor_parallel_state_dicts: no state dicts given. Fix: pass one per "
                                  "tensor rank, in tensor-rank order")
    keys = list(state_dicts[0])
    for r, sd in enumerate(state_dicts[1:], start=1):
        if list(sd) != keys:
            missing = set(keys) ^ set(sd)
            raise TensorParallelError(f"tensor rank {r}'s state dict has different keys from rank 0's "
                                      f"(differences: {sorted(missing)[:5]}). Fix: pass state dicts of one layer set")
    out = {}
    for key in keys:
        tensors = [sd[key] for sd in state_dicts]
        how = param_sharding(key, plan, prefix)
        if how is None or len(tensors) == 1:
            if check_replicated and not all(torch.equal(tensors[0], t) for t in tensors[1:]):
                raise TensorParallelError(
                    f"replicated entry {key!r} differs across tensor ranks; the run's tensor ranks drifted apart "
                    "(replicated gradients were not identical). Fix: check that all tensor ranks see the same data "
                    "and seed, or pass check_replicated=False to take rank 0's copy")
            out[key] = tensors[0]
        else:
            out[key] = merge_shards(tensors, *how)
    return out


def shard_state_dict(state_dict: dict[str, torch.Tensor], rank: int, world: int, plan: dict[str, str] = R1_TP_PLAN,
                     *, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensor rank `rank`'s slice of a full state dict (e.g. a Hugging Face checkpoint) under `plan`."""
    out = {}
    for key, t in state_dict.items():
        how = param_sharding(key, plan, prefix)
        out[key] = t if how is None else shard_tensor(t, how[0], rank, world, how[1])
    return out


# ----------------------------------------------------------------------------- universal checkpoints


def _pipeline_names(full: R1ForCausalLM) -> dict[str, str]:
    """HF parameter name -> the name DeepSpeed gives it in r1_ds's PipelineModule ("{layer}.{key}", the tied
    embedding under "tied_modules.embed."); the tied LM head has no parameter of its own. `full` on the
    meta device will do."""
    from .pipeline import TIED_KEY, pipe_layer_prefixes

    config = full.config
    names = {}
    for idx, prefix in enumerate(pipe_layer_prefixes(config)):
        for name, _ in full.named_parameters():
            if prefix and name.startswith(prefix):
                names[name] = f"{idx}.{name[len(prefix):]}"
    if config.tie_word_embeddings:
        names["model.embed_tokens.weight"] = f"tied_modules.{TIED_KEY}.weight"
    return names


def universal_checkpoint_info(config, tensor: int, plan: dict[str, str] = R1_TP_PLAN, *,
                              pipeline: bool = False) -> dict:
    """What `ds_to_universal` needs to merge this model's tensor shards, for
    `engine.save_checkpoint(..., client_state={"universal_checkpoint_info": universal_checkpoint_info(cfg, tp)})`.

    DeepSpeed reads it from the first model-state file only (stage 0, tensor rank 0), so it describes the
    whole model, every stage included. `pipeline=True` uses the names of r1_ds's PipelineModule.
    Column-parallel and vocabulary parameters use DeepSpeed's default (concatenate on dim 0; the vocabulary
    ones are listed too, unpadded: original_vocab_size = vocab_size); row-parallel ones concatenate on
    dim 1; the gate weight is 3 sub-parameters [h1; h2; h3] on dim 1; the rest is TP-replicated.
    Patterns are exact names: ds_to_universal (strict by default) refuses a pattern that matches nothing."""
    from deepspeed.checkpoint import constants as C

    with torch.device("meta"):
        full = R1ForCausalLM(config)
    ds_names = _pipeline_names(full) if pipeline else {n: n for n, _ in full.named_parameters()}
    replicated, row, vocab, sub = [], [], [], []
    for hf_name, _ in full.named_parameters():  # a tied LM head appears once, as the embedding
        if hf_name not in ds_names:
            continue
        how = param_sharding(hf_name, plan)
        pattern = "^" + re.escape(ds_names[hf_name]) + "$"
        if how is None:
            replicated.append(pattern)
        elif how == (1, 1):
            row.append(pattern)
        elif how == (1, 3):
            sub.append(pattern)
        elif how == (0, 1) and hf_name in ("model.embed_tokens.weight", "lm_head.weight"):
            vocab.append(pattern)
    d = config.hidden_size
    gate_rows = full.model.layers[0].self_attn.gate.out_features  # 3 levels, stored padded to 8 rows
    return {
        C.UNIVERSAL_CHECKPOINT_VERSION_KEY: C.UNIVERSAL_CHECKPOINT_VERSION_VALUE,
        C.TP_REPLICATED_PARAMETER_PATTERNS: replicated,
        C.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: row,
        C.VOCABULARY_PARAMETER_PATTERNS: vocab,
        C.ORIGINAL_VOCAB_SIZE: config.vocab_size,
        C.PARAMETER_WITH_SUB_PARAMS: [{"patterns": sub, "shape": (gate_rows, (d, d, d)), "partition_dim": 1}] if sub else [],
        C.SUB_PARAM_SHARD_WIDTHS: {p: [[d // tensor] * tensor] * 3 for p in sub},
    }
