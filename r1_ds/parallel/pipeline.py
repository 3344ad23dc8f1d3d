"""R1 as a DeepSpeed `PipelineModule`, cut from an ordinary `R1ForCausalLM`.

The pipeline is a flat list of the model's own Hugging Face modules; nothing is re-implemented:

    pipe layer   module                          HF key prefix          pipe in -> out
    0            model.embed_tokens (tied: "embed")  model.embed_tokens.   ids (B, T) -> h (B, T, d)
    1 .. L       model.layers[i]  (R1DecoderLayer)   model.layers.{i}.     h -> h
    L + 1        model.norm                          model.norm.           h -> h
    L + 2        lm_head, or the tied embedding      lm_head.              h -> logits (B, T, V)

Every stage passes one contiguous float tensor, so no adapter has to pack or unpack tuples. The
layer files DeepSpeed writes (`layer_XX-model_YY-model_states.pt`, keys relative to the module)
therefore map to HF keys by prefix: `hf_key = pipe_layer_prefixes(config)[XX] + key` (that mapping, and
the tied key, live in `r1_ds.parallel.state_dict_mapping`).
The tied LM head has no file: it is a function of the embedding (DeepSpeed skips callables).

Weights come from the model passed in, so a pipeline run starts from exactly the weights a
single-process run would start from (the parity tests rely on it). Each rank builds the whole
model once on the CPU and keeps only its stage's modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model import R1Config, R1ForCausalLM
from ..model.modeling_r1 import R1DecoderLayer
from .state_dict_mapping import TIED_KEY
from .tensor_parallel import apply_tensor_parallel, tensor_parallel_group, tensor_parallel_loss_fn
from .topology import ParallelDims
from .tp_layers import copy_to_tp

DEFAULT_PARTITION = "type:R1DecoderLayer"  # balance decoder layers; embed/norm/head ride on the end stages


def tied_lm_head(embedding: nn.Embedding, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head of a tied model: h (B, T, d) @ E^T (d, V) -> logits (B, T, V)."""
    # --- tensor parallel: a vocabulary-parallel embedding gives this rank's (B, T, V / tp) logits;
    # h enters the tensor region first, so that its gradient is summed over the vocabulary shards
    if getattr(embedding, "group", None) is not None:
        hidden = copy_to_tp(hidden, embedding.group)
    # --- end tensor parallel
    return F.linear(hidden, embedding.weight)


class _ModelParts:
    """Hands the model's modules to the layer specs while the PipelineModule is built, then lets
    go of the model so that the other stages' modules can be freed."""

    def __init__(self, model: R1ForCausalLM):
        self._model = model

    def get(self, name: str) -> nn.Module:
        if self._model is None:
            raise RuntimeError("pipeline layer spec built after its source model was released")
        m = self._model
        if name == "embed":
            return m.model.embed_tokens
        if name == "norm":
            return m.model.norm
        if name == "head":
            return m.lm_head
        return m.model.layers[int(name)]

    def release(self) -> None:
        self._model = None


def _specs(parts: _ModelParts, config: R1Config) -> list:
    """The layer specs; `build()` hands out the model's module instead of constructing a new one."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    class ModuleSpec(LayerSpec):
        def __init__(self, typename, name):
            super().__init__(typename)
            self.name = name

        def build(self, log=False):
            return parts.get(self.name)

        def __repr__(self):
            return f"{self.typename.__name__}({self.name})"

    class TiedModuleSpec(TiedLayerSpec):
        def __init__(self, key, typename, name, **kw):
            super().__init__(key, typename, **kw)
            self.name = name

        def build(self, log=False):
            return parts.get(self.name)

        def __repr__(self):
            return f"Tied[{self.key}]{self.typename.__name__}({self.name})"

    L = config.num_hidden_layers
    tied = config.tie_word_embeddings
    embed = (
        TiedModuleSpec(TIED_KEY, nn.Embedding, "embed", tied_weight_attr=["weight"])
        if tied
        else ModuleSpec(nn.Embedding, "embed")
    )
    head = (
        TiedModuleSpec(TIED_KEY, nn.Embedding, "embed", forward_fn=tied_lm_head, tied_weight_attr=["weight"])
        if tied
        else ModuleSpec(nn.Linear, "head")
    )
    return [
        embed,
        *[ModuleSpec(R1DecoderLayer, str(i)) for i in range(L)],
        ModuleSpec(type(parts.get("norm")), "norm"),
        head,
    ]


def shard_for_tensor_parallel(model: R1ForCausalLM, dims: ParallelDims) -> None:
    """Shard the full model in place with the tensor-parallel plan (r1_ds.parallel.tensor_parallel),
    before the pipeline is cut and before `deepspeed.initialize`. Tensor size 1 needs nothing.

    Without a pipeline the caller must also hand DeepSpeed the grid as `mpu`
    (`PipelineParallelGrid(topology=dims.topology())`, as `r1_ds.train` does): otherwise DeepSpeed
    averages gradients over all ranks, tensor ranks included."""
    # --- tensor parallel: the declared plan R1_TP_PLAN, over this rank's tensor group
    if dims.tensor > 1:
        apply_tensor_parallel(model, tensor_parallel_group(dims))
    # --- end tensor parallel


def build_pipeline(
    model: R1ForCausalLM,
    dims: ParallelDims,
    *,
    partition_method: str = DEFAULT_PARTITION,
    activation_checkpoint_interval: int = 0,
):
    """Cut `model` into a PipelineModule over `dims` (pipe x tensor x data). Call after
    `deepspeed.init_distributed`; afterwards only this rank's stage is referenced."""
    from deepspeed.pipe import PipelineModule

    config = model.config
    dims.check_model(
        num_hidden_layers=config.num_hidden_layers,
        level_heads=config.level_heads,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
    )
    shard_for_tensor_parallel(model, dims)
    parts = _ModelParts(model)
    try:
        module = PipelineModule(
            layers=_specs(parts, config),
            topology=dims.topology(),
            # label-smoothed CE; the vocabulary-parallel one when tensor parallelism splits the head's logits
            loss_fn=tensor_parallel_loss_fn(model.lm_head, config.label_smoothing),
            partition_method=partition_method,
            activation_checkpoint_interval=activation_checkpoint_interval,
            checkpointable_layers=["R1DecoderLayer"],
        )
    finally:
        parts.release()
    module.r1_config = config  # read by the trainer (drop path, FLOPs, checkpoint metadata)
    return module


def decoder_layers(module: nn.Module) -> list[R1DecoderLayer]:
    return [m for m in module.modules() if isinstance(m, R1DecoderLayer)]


__all__ = [
    "DEFAULT_PARTITION",
    "TIED_KEY",
    "build_pipeline",
    "decoder_layers",
    "shard_for_tensor_parallel",
    "tied_lm_head",
]
