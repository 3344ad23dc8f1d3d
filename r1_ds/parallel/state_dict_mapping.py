"""How parameter names and state dicts map between layouts: the Hugging Face names of the one-process model,
the layer files of r1_ds's PipelineModule, and the tensor-rank shards of the TP plan.

    pipe_layer_prefixes(config)        pipeline layer index -> HF key prefix (hf_key = prefix + layer key)
    TIED_KEY                           DeepSpeed tie key of the embedding / LM-head weight
    merge_tensor_parallel_state_dicts  per-tensor-rank state dicts -> the full one (export)
    shard_state_dict                   a full state dict -> one tensor rank's slice
    universal_checkpoint_info          what `ds_to_universal` needs to merge this model's tensor shards

Both `r1_ds.parallel.pipeline` / `tensor_parallel` (building a run) and `r1_ds.checkpoint` (reading one
back) use these, so a name is mapped in one place only.
"""

from __future__ import annotations

import re

import torch

from ..model import R1Config, R1ForCausalLM
from .topology import TensorParallelError
from .tp_layers import merge_shards, shard_tensor
from .tp_plan import R1_TP_PLAN, param_sharding

__all__ = [
    "TIED_KEY",
    "merge_tensor_parallel_state_dicts",
    "pipe_layer_prefixes",
    "pipeline_parameter_names",
    "shard_state_dict",
    "universal_checkpoint_info",
]

TIED_KEY = "embed"  # DeepSpeed tie key of the embedding / LM-head weight


def pipe_layer_prefixes(config: R1Config) -> list[str | None]:
    """HF key prefix of each pipeline layer, by global layer index. None: the layer has no weights
    of its own (the tied LM head)."""
    L = config.num_hidden_layers
    head = None if config.tie_word_embeddings else "lm_head."
    return ["model.embed_tokens.", *[f"model.layers.{i}." for i in range(L)], "model.norm.", head]


# ----------------------------------------------------------------------------- tensor shards


def merge_tensor_parallel_state_dicts(
    state_dicts: list[dict[str, torch.Tensor]],
    plan: dict[str, str] = R1_TP_PLAN,
    *,
    prefix: str = "",
    check_replicated: bool = True,
) -> dict[str, torch.Tensor]:
    """The full state dict from the per-tensor-rank state dicts (in tensor-rank order). Sharded entries are
    concatenated (respecting strides); replicated entries are taken from rank 0 and, with
    `check_replicated`, must be equal on every rank (a difference means the ranks drifted apart)."""
    if not state_dicts:
        raise TensorParallelError(
            "merge_tensor_parallel_state_dicts: no state dicts given. Fix: pass one per "
            "tensor rank, in tensor-rank order"
        )
    keys = list(state_dicts[0])
    for r, sd in enumerate(state_dicts[1:], start=1):
        if list(sd) != keys:
            missing = set(keys) ^ set(sd)
            raise TensorParallelError(
                f"tensor rank {r}'s state dict has different keys from rank 0's "
                f"(differences: {sorted(missing)[:5]}). Fix: pass state dicts of one layer set"
            )
    out = {}
    for key in keys:
        tensors = [sd[key] for sd in state_dicts]
        how = param_sharding(key, plan, prefix)
        if how is None or len(tensors) == 1:
            if check_replicated and not all(torch.equal(tensors[0], t) for t in tensors[1:]):
                raise TensorParallelError(
                    f"replicated entry {key!r} differs across tensor ranks; the run's tensor ranks drifted apart "
                    "(replicated gradients were not identical). Fix: check that all tensor ranks see the same data "
                    "and seed, or pass check_replicated=False to take rank 0's copy"
                )
            out[key] = tensors[0]
        else:
            out[key] = merge_shards(tensors, *how)
    return out


def shard_state_dict(
    state_dict: dict[str, torch.Tensor], rank: int, world: int, plan: dict[str, str] = R1_TP_PLAN, *, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Tensor rank `rank`'s slice of a full state dict (e.g. a Hugging Face checkpoint) under `plan`."""
    out = {}
    for key, t in state_dict.items():
        how = param_sharding(key, plan, prefix)
        out[key] = t if how is None else shard_tensor(t, how[0], rank, world, how[1])
    return out


# ----------------------------------------------------------------------------- pipeline names, universal checkpoints


def pipeline_parameter_names(full: R1ForCausalLM) -> dict[str, str]:
    """HF parameter name -> the name DeepSpeed gives it in r1_ds's PipelineModule ("{layer}.{key}", the tied
    embedding under "tied_modules.embed."); the tied LM head has no parameter of its own. `full` on the
    meta device will do."""
    config = full.config
    names = {}
    for idx, prefix in enumerate(pipe_layer_prefixes(config)):
        for name, _ in full.named_parameters():
            if prefix and name.startswith(prefix):
                names[name] = f"{idx}.{name[len(prefix) :]}"
    if config.tie_word_embeddings:
        names["model.embed_tokens.weight"] = f"tied_modules.{TIED_KEY}.weight"
    return names


def universal_checkpoint_info(
    config, tensor: int, plan: dict[str, str] = R1_TP_PLAN, *, pipeline: bool = False
) -> dict:
    """What `ds_to_universal` needs to merge this model's tensor shards, for
    `engine.save_checkpoint(..., client_state={"universal_checkpoint_info": universal_checkpoint_info(cfg, tp)})`.

    DeepSpeed reads it from the first model-state file only (stage 0, tensor rank 0), so it describes the
    whole model, every stage included. `pipeline=True` uses the names of r1_ds's PipelineModule.
    Column-parallel and vocabulary parameters use DeepSpeed's default (concatenate on dim 0; the vocabulary
    ones are listed too, unpadded: original_vocab_size = vocab_size); row-parallel ones concatenate on
    dim 1; the gate weight is 3 sub-parameters [h1; h2; h3] on dim 1; the rest is TP-replicated.
    Patterns are exact names: ds_to_universal (strict by default) refuses a pattern that matches nothing."""
    from deepspeed.checkpoint import constants as C  # lazy: reading a checkpoint back needs no DeepSpeed

    with torch.device("meta"):
        full = R1ForCausalLM(config)
    ds_names = pipeline_parameter_names(full) if pipeline else {n: n for n, _ in full.named_parameters()}
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
        C.PARAMETER_WITH_SUB_PARAMS: [{"patterns": sub, "shape": (gate_rows, (d, d, d)), "partition_dim": 1}]
        if sub
        else [],
        C.SUB_PARAM_SHARD_WIDTHS: {p: [[d // tensor] * tensor] * 3 for p in sub},
    }
