"""The tensor-parallel plan as data: which module of R1 gets which style, and which of its parameters each
style shards along which dimension. `r1_ds.parallel.tensor_parallel` applies the plan to a model;
`r1_ds.parallel.state_dict_mapping` reads it to shard and merge state dicts."""

from __future__ import annotations

import re
from collections.abc import Callable

from .topology import TensorParallelError

__all__ = ["R1_TP_PLAN", "STYLE_SHARDING", "join_name", "param_sharding", "plan_matcher"]

# Module name (HF names; `*` is one name component) -> style (the styles: STYLE_SHARDING below).
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

# style -> {parameter name: (dim, stride)} of the parameters it shards (the others stay replicated). What each
# style does to its module is in r1_ds.parallel.tensor_parallel (STYLES).
STYLE_SHARDING: dict[str, dict[str, tuple[int, int]]] = {
    # nn.Linear, output features split; the input is copied into the tensor region unless the parent did it
    "colwise": {"weight": (0, 1), "bias": (0, 1)},
    # nn.Linear, input features split; partial outputs all-reduced, bias (replicated) added once
    "rowwise": {"weight": (1, 1)},
    # the level gate nn.Linear(3d, 8) (3 rows used): row-parallel over [h1; h2; h3] (3 blocks), bias once; its output
    # weighs sharded heads, so its gradient is all-reduced in backward
    "gate": {"weight": (1, 3)},
    # nn.Embedding or LM-head nn.Linear, split by vocabulary rows; the head returns sharded logits
    "vocab": {"weight": (0, 1)},
    # LM head split by vocabulary, logits all-gathered (generation; costs a (B, T, V) gather)
    "vocab_gather": {"weight": (0, 1)},
    # R1HierarchicalAttention: local head counts for the kernels, input copied in once for q/k/v
    "hierarchical_attention": {},
    # any module: its first input is copied into the tensor region once, for all its colwise children
    "parallel_input": {},
    # R1ForCausalLM: the loss reads the vocabulary-sharded logits of a "vocab" lm_head
    "vocab_parallel_loss": {},
}


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + r"[^.]+".join(re.escape(p) for p in pattern.split("*")) + "$")


def plan_matcher(plan: dict[str, str]) -> Callable[[str], str | None]:
    """`style_of(module name) -> style or None` for `plan`; refuses unknown styles and overlapping patterns."""
    for key, style in plan.items():
        if style not in STYLE_SHARDING:
            raise TensorParallelError(
                f"plan entry {key!r}: unknown style {style!r}. Fix: use one of {sorted(STYLE_SHARDING)}"
            )
    compiled = [(_compile(k), k, s) for k, s in plan.items()]

    def style_of(name: str) -> str | None:
        hits = [(k, s) for rx, k, s in compiled if rx.match(name)]
        if len(hits) > 1:
            raise TensorParallelError(
                f"module {name!r} matches several plan entries {hits}. Fix: make the plan's patterns disjoint"
            )
        return hits[0][1] if hits else None

    return style_of


def join_name(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


def param_sharding(name: str, plan: dict[str, str] = R1_TP_PLAN, prefix: str = "") -> tuple[int, int] | None:
    """(dim, stride) along which parameter `name` (e.g. "model.layers.0.self_attn.gate.weight") is sharded
    under `plan`, or None if it is replicated on every tensor rank."""
    style_of = plan_matcher(plan)
    module, _, leaf = join_name(prefix, name).rpartition(".")
    style = style_of(module)
    return STYLE_SHARDING[style].get(leaf) if style else None
