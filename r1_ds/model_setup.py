"""The model a training run starts from, and how it is laid over the ranks: built from a preset or a Hugging Face
folder, then cut into pipeline stages or sharded for tensor parallelism (r1_ds.parallel), optionally compiled
block by block; its optimizer parameter groups."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from .config import TrainConfig, attn_implementation
from .metrics import log0
from .model import R1Config, R1ForCausalLM
from .model.hierarchical_attention import raise_recompile_limit
from .model.modeling_r1 import set_drop_path_rate
from .parallel.pipeline import build_pipeline, decoder_layers, shard_for_tensor_parallel
from .parallel.topology import ParallelDims


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear weights, embeddings); not norms and biases."""
    decay = [p for p in module.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in module.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def build_model(cfg: TrainConfig, device_type: str) -> R1ForCausalLM:
    """The whole model on this rank's CPU, the same weights on every rank: from model.init_from, else
    model.preset + model.overrides seeded by `seed`; the attention kernels of model.attn_implementation."""
    impl = attn_implementation(cfg, device_type)
    if cfg.model.init_from:  # weights (and architecture) of a Hugging Face folder, e.g. an export
        model = R1ForCausalLM.from_pretrained(cfg.model.init_from, dtype=torch.float32)
        log0("initialised from %s (model.preset and model.overrides are not used)", cfg.model.init_from)
    else:
        config = R1Config.from_preset(cfg.model.preset, **cfg.model.overrides)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank, whatever the layout
        model = R1ForCausalLM(config)
    model.set_attn_implementation(impl)
    model.config.label_smoothing = cfg.schedule.label_smoothing  # a training setting; the export resets it to 0
    return model


def compile_blocks(module: torch.nn.Module, mode: str | None = None) -> int:
    """torch.compile every R1 decoder block of `module` (a model or this rank's pipeline stage) in place, as
    torchtitan does: one graph per block forward and one per backward instead of dozens of small kernels
    and Python calls each. DeepSpeed keeps calling the modules as before. `mode` is torch.compile's (None: its
    default). Returns the number compiled."""
    raise_recompile_limit()  # generation or eval at other lengths may add graphs; never fall back silently
    layers = decoder_layers(module)
    for layer in layers:
        layer.compile(mode=mode)
    return len(layers)


def parallelize(
    model: R1ForCausalLM, dims: ParallelDims, *, partition: str, activation_checkpoint_interval: int
) -> tuple[torch.nn.Module, object, Callable[[float], None]]:
    """`model` laid over the ranks: this rank's pipeline stage (a `PipelineModule`), else the model with its
    tensor-parallel shards. Returns (module, mpu for deepspeed.initialize or None, the DropPath setter of
    `module` taking the rate)."""
    layers = model.config.num_hidden_layers
    if dims.pipeline_enabled:
        module = build_pipeline(
            model, dims, partition_method=partition, activation_checkpoint_interval=activation_checkpoint_interval
        )
        return module, None, partial(set_drop_path_rate, module, num_hidden_layers=layers)
    config = model.config
    dims.check_model(
        num_hidden_layers=layers,
        level_heads=config.level_heads,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
    )
    shard_for_tensor_parallel(model, dims)
    mpu = None
    if dims.tensor > 1:
        # DeepSpeed's grid as mpu: gradients are reduced over the data group only, and the gradient norm
        # counts sharded parameters on every tensor rank and replicated ones once (a PipelineModule
        # brings its own grid)
        from deepspeed.runtime.pipe.topology import PipelineParallelGrid

        mpu = PipelineParallelGrid(topology=dims.topology())
    if activation_checkpoint_interval:
        model.gradient_checkpointing_enable()
    return model, mpu, model.set_drop_path_rate  # the model's own: it also records the rate in its config
