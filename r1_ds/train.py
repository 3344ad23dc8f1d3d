"""`r1-ds train` / `python -m r1_ds.train`: train an R1 model with DeepSpeed.

    parse -> init distributed -> settings check -> build model -> pipeline or not
          -> deepspeed.initialize -> resume -> loop (progressive stages, LR, DropPath, metrics,
             checkpoints) -> final checkpoint

Launch with any of (docs/training.md, "Launchers"):
    deepspeed --num_gpus 8 -m r1_ds.train --config run.yaml
    deepspeed --hostfile hostfile --launcher openmpi -m r1_ds.train ...   (MPI ranks via mpi4py)
    torchrun --nproc_per_node 8 -m r1_ds.train ...
    accelerate launch --use_deepspeed --deepspeed_config_file ds.json -m r1_ds.train ...  (no pipeline)
    python -m r1_ds.train ...                                                (one process)
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time

import numpy as np
import torch

from data_prep.atomic import atomic_write_json

from .config import ConfigError, TrainConfig, load_train_config, parse_set, read_mapping, resolve_batch
from .data import ProgressiveSampler, Stage, batch_iterator, open_dataset
from .distributed import exit_process, init_distributed, peak_memory_gib, shutdown_distributed, under_accelerate
from .divergence import DivergenceError
from .extras import MissingExtra
from .metrics import MetricsWriter, log0

log = logging.getLogger("r1_ds.train")

# ----------------------------------------------------------------------------- command line

_FLAGS = {  # --flag -> dotted training-config key (the CLI is the top of the precedence order)
    "deepspeed_config": "deepspeed_config", "output_dir": "output_dir", "seed": "seed",
    "preset": "model.preset", "data": "data.path", "seq_len": "data.seq_len", "micro_batch": "data.micro_batch",
    "global_batch": "schedule.global_batch", "grad_accum": "schedule.grad_accum", "steps": "schedule.steps",
    "lr": "schedule.lr", "warmup_steps": "schedule.warmup_steps", "pipe": "parallel.pipe",
    "tensor": "parallel.tensor", "save_every": "checkpoint.every", "checkpoint_dir": "checkpoint.dir",
    "resume": "checkpoint.resume", "log_every": "log.every", "compile": "model.compile",
    "trust_checkpoint": "checkpoint.trust",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="training config (YAML or JSON); see docs/training.md")
    p.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config",
                   help="DeepSpeed JSON (default: the training config's, else ds_configs/tiny_cpu.json)")
    p.add_argument("--output-dir", dest="output_dir", help="run folder: metrics, TensorBoard, checkpoints")
    p.add_argument("--preset", help="model size: tiny, 125m, 350m, 1.3b")
    p.add_argument("--data", help="packed shard folder (default: synthetic sample data)")
    p.add_argument("--seq-len", dest="seq_len", type=int, help="tokens per training row (default: the shards')")
    p.add_argument("--micro-batch", dest="micro_batch", type=int, help="sequences per rank per micro-step")
    p.add_argument("--global-batch", dest="global_batch", type=int, help="sequences per optimizer step")
    p.add_argument("--grad-accum", dest="grad_accum", type=int, help="micro-steps per optimizer step")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup-steps", dest="warmup_steps", type=int, help="linear learning-rate warm-up steps")
    p.add_argument("--pipe", type=int, help="pipeline stages")
    p.add_argument("--tensor", type=int, help="tensor-parallel size")
    p.add_argument("--save-every", dest="save_every", type=int, help="checkpoint every N steps (0: at the end)")
    p.add_argument("--checkpoint-dir", dest="checkpoint_dir", help="checkpoint folder (default: OUTPUT_DIR/checkpoints)")
    p.add_argument("--resume", help='"auto" (default), "none", or a checkpoint folder')
    p.add_argument("--trust-checkpoint", dest="trust_checkpoint", action="store_true", default=None,
                   help="unpickle the resumed checkpoint as it is (checkpoint.trust): only for checkpoints from a "
                        "source you trust; by default they are read weights-only and other Python objects are refused")
    p.add_argument("--log-every", dest="log_every", type=int, help="log metrics every N steps")
    p.add_argument("--seed", type=int, help="seed of the initial weights and the data order")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any training-config field, e.g. --set schedule.drop_path_max=0.1 (repeatable)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="torch.compile each decoder block (model.compile)")
    # Launchers append these; DeepSpeed reads LOCAL_RANK from the environment anyway.
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)


def cli_overrides(args: argparse.Namespace) -> dict:
    out = {key: getattr(args, flag) for flag, key in _FLAGS.items() if getattr(args, flag, None) is not None}
    if getattr(args, "progress", None) is False:
        out["log.progress"] = False
    for item in args.set:
        key, value = parse_set(item)
        out[key] = value
    return out


# ----------------------------------------------------------------------------- settings file


def find_ds_config(path: str) -> str:
    """`path` as given, else relative to the repository (so the default ds_configs/ works anywhere)."""
    if os.path.isfile(path) or os.path.isabs(path):
        return path
    repo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
    return repo if os.path.isfile(repo) else path


# ----------------------------------------------------------------------------- settings -> DeepSpeed JSON


def resolve_stages(cfg: TrainConfig, first_batch: int) -> list[Stage]:
    """Progressive stages with explicit starts; no stages = one stage over the whole run."""
    s = cfg.schedule
    if not s.stages:
        return [Stage(start=0, steps=s.steps, global_batch=first_batch, data_fraction=1.0)]
    out, start = [], 0
    for i, st in enumerate(s.stages):
        steps = s.steps - start if i == len(s.stages) - 1 else st.steps
        out.append(Stage(start=start, steps=steps, global_batch=st.global_batch, data_fraction=st.data_fraction))
        start += steps
    return out


def _auto_keys(node, path: str = "") -> list[str]:
    """Dotted keys whose value is "auto" (ds_configs/hf_trainer_auto.json's placeholders)."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _auto_keys(value, f"{path}{key}.")]
    return [path[:-1]] if node == "auto" else []


def build_ds_config(cfg: TrainConfig, ds_json: dict, *, world_size: int, device_type: str):
    """The DeepSpeed dict to initialise with, plus (dims, batch plan, notes, parsed r1_compression section or None)."""
    from .precision import resolve_precision

    from .parallel.compression_config import compression_config

    auto = _auto_keys(ds_json)
    if auto:
        raise ConfigError(f"the DeepSpeed JSON {cfg.deepspeed_config} has \"auto\" at {auto}: HF Trainer and accelerate "
                          "fill those, r1-ds train does not. Fix: use a recipe with values (e.g. "
                          "ds_configs/zero1_dp.json) or write them in.")
    ds, compression = compression_config(ds_json)  # parsed once, now, not after deepspeed.initialize
    ds, notes = resolve_precision(ds, dtype=cfg.precision.dtype, apex=cfg.precision.apex, device_type=device_type)
    s = cfg.schedule
    if s.stages and s.global_batch is not None:
        raise ConfigError(f"schedule.global_batch={s.global_batch} and schedule.stages are both set: each stage has "
                          "its own global_batch. Fix: remove schedule.global_batch.")
    first = s.stages[0].global_batch if s.stages else s.global_batch
    dims, plan = resolve_batch(world_size=world_size, pipe=cfg.parallel.pipe, tensor=cfg.parallel.tensor,
                               data=cfg.parallel.data, ds_config=ds, micro_batch=cfg.data.micro_batch,
                               global_batch=first, grad_accum=s.grad_accum,
                               stage_batches=tuple(st.global_batch for st in s.stages[1:]))
    ds.update(train_batch_size=plan.global_batch, train_micro_batch_size_per_gpu=plan.micro_batch,
              gradient_accumulation_steps=plan.grad_accum)
    if "scheduler" in ds:
        notes.append(f"DeepSpeed JSON scheduler {ds['scheduler'].get('type')!r} ignored: r1-ds uses schedule.* "
                     "(linear warm-up + cosine)")
        ds.pop("scheduler")
    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    params = opt.setdefault("params", {})
    if s.lr is not None:
        params["lr"] = s.lr
    params.setdefault("lr", 3e-4)
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if dims.tensor > 1 and stage >= 3:
        raise ConfigError(f"parallel.tensor={dims.tensor} with zero_optimization.stage={stage}: ZeRO-3 would partition "
                          "the tensor shards again, which r1-ds neither tests nor exports (the ZeRO-3 export reads "
                          "tensor rank 0 only). Fix: set zero_optimization.stage to 0, 1 or 2, or parallel.tensor "
                          "to 1.")
    if dims.pipeline_enabled and stage >= 2:
        raise ConfigError(f"parallel.pipe={dims.pipe} with zero_optimization.stage={stage}: DeepSpeed's pipeline "
                          "engine supports ZeRO stage 0 or 1 only. Fix: set zero_optimization.stage to 1, or "
                          "parallel.pipe to 1.")
    if cfg.model.compile and stage >= 3:
        raise ConfigError(f"model.compile=true with zero_optimization.stage={stage}: ZeRO-3 gathers and releases "
                          "parameters in hooks around each module, which compiled blocks do not run the same way. "
                          "Fix: set zero_optimization.stage to 0, 1 or 2, or model.compile to false.")
    return ds, dims, plan, notes, compression


class WarmupCosine:
    """LR multiplier of optimizer step t: linear warm-up over `warmup` steps to 1, then cosine to
    `min_ratio` at step `total`. An object (not a lambda) so the scheduler's state dict keeps it."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        progress = min(1.0, (t - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (linear weights, embeddings); not norms and biases."""
    decay = [p for p in module.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in module.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def build_model(cfg: TrainConfig, device_type: str):
    from .model import R1Config, R1ForCausalLM

    impl = cfg.model.attn_implementation
    if impl == "auto":
        impl = "flex_attention" if device_type == "cuda" else "eager"
    if cfg.model.init_from:  # weights (and architecture) of a Hugging Face folder, e.g. an export
        model = R1ForCausalLM.from_pretrained(cfg.model.init_from, dtype=torch.float32)
        log0("initialised from %s (model.preset and model.overrides are not used)", cfg.model.init_from)
    else:
        config = R1Config.from_preset(cfg.model.preset, **cfg.model.overrides)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank, whatever the layout
        model = R1ForCausalLM(config)
    model.config._attn_implementation = impl
    model.config.label_smoothing = cfg.schedule.label_smoothing  # a training setting; the export resets it to 0
    return model


def compile_blocks(module: torch.nn.Module) -> int:
    """torch.compile every R1 decoder block of `module` (a model or this rank's pipeline stage) in place, as
    torchtitan does: one graph per block forward and one per backward instead of dozens of small kernels
    and Python calls each. DeepSpeed keeps calling the modules as before. Returns the number compiled."""
    from .model.hierarchical_attention import raise_recompile_limit
    from .parallel.pipeline import decoder_layers

    raise_recompile_limit()  # generation or eval at other lengths may add graphs; never fall back silently
    layers = decoder_layers(module)
    for layer in layers:
        layer.compile()
    return len(layers)


def step_seed(seed: int, step: int, data_rank: int, pipe_rank: int) -> int:
    """Randomness of one step (DropPath masks) as a function of (seed, step, rank): a resumed run draws
    the same masks, and tensor peers agree."""
    return int(np.random.SeedSequence([seed, step, data_rank, pipe_rank]).generate_state(1)[0])


# ----------------------------------------------------------------------------- one optimizer step


def train_step_pipeline(engine, batches) -> torch.Tensor:
    """One optimizer step on the pipeline engine: gas micro-batches; the mean loss over the global
    batch, as a device tensor (DeepSpeed has averaged it over the data ranks already)."""
    return engine.train_batch(data_iter=batches)


def train_step_data_parallel(engine, batches, gas: int) -> torch.Tensor:
    """One optimizer step without a pipeline; this rank's mean loss, as a device tensor (`logged_loss`
    averages it over the ranks). The accumulation boundary is set explicitly, so the step stays correct
    when a progressive stage changes gas."""
    losses = []
    for m, (x, y) in enumerate(batches):
        engine.set_gradient_accumulation_boundary(m == gas - 1)
        out = engine(input_ids=x.to(engine.device), labels=y.to(engine.device))
        engine.backward(out.loss)
        engine.step()
        losses.append(out.loss.detach().float())
    if len(losses) != gas:
        raise RuntimeError(f"expected {gas} micro-batches, got {len(losses)}")
    return torch.stack(losses).mean()


def logged_loss(loss: torch.Tensor, *, pipeline: bool) -> float:
    """The step's mean loss over the global batch, as a number. Called on logging steps only: it waits
    for the device and, without a pipeline, is a collective (every rank logs at the same steps)."""
    if pipeline:
        return float(loss)
    from deepspeed import comm as dist

    dist.all_reduce(loss)  # tensor peers hold the same loss, so the world mean is the data-parallel mean
    return float(loss) / dist.get_world_size()


# ----------------------------------------------------------------------------- run


def user_errors() -> tuple[type[Exception], ...]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .model import R1ConfigError
    from .parallel.comm_hook import CompressionConfigError
    from .parallel.topology import LayoutError
    from .precision import PrecisionError
    from .run_lock import RunLockError

    return (ConfigError, DataError, PrecisionError, CheckpointError, LayoutError, R1ConfigError, CompressionConfigError,
            RunLockError, MissingExtra)


def run(args: argparse.Namespace) -> int:
    """`r1-ds train`: settings from file + command line, then `train`. Bad settings exit with code 2
    and one readable message instead of a traceback."""
    try:
        overrides = cli_overrides(args)
        cfg = load_train_config(args.config, overrides)
        acc_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if under_accelerate() and acc_file and "deepspeed_config" not in overrides and not (
                args.config and "deepspeed_config" in read_mapping(args.config)):
            cfg.deepspeed_config = acc_file  # the JSON accelerate was given, unless the CLI or file names one
        train(cfg)
    except user_errors() as err:  # the same on every rank: say it once
        log.log(logging.ERROR if os.environ.get("RANK", "0") == "0" else logging.DEBUG, "%s: %s",
                type(err).__name__, err)
        code = 2
    except DivergenceError as err:  # not a user error, but one line too; a failed run (nothing saved after it)
        log.log(logging.ERROR if os.environ.get("RANK", "0") == "0" else logging.DEBUG, "%s", err)
        code = 3
    else:
        code = 0
    shutdown_distributed()
    return code


def train(cfg: TrainConfig):
    """Train per `cfg`; returns the DeepSpeed engine (tests and notebooks inspect it)."""
    if cfg.align.enabled:  # image-text-code alignment, alone or with the LM loss (r1_ds/align/trainer.py)
        from .align.trainer import train_align

        return train_align(cfg)
    if under_accelerate() and cfg.parallel.pipe > 1:
        raise ConfigError(
            f"parallel.pipe={cfg.parallel.pipe} under `accelerate launch`: accelerate drives DeepSpeed's "
            "forward/backward/step, which the pipeline engine does not offer. Fix: set parallel.pipe=1 (data "
            "parallel + ZeRO), or launch pipelines with `deepspeed` or `torchrun`.")

    # ---- distributed start-up; a launched rank ends with its launcher
    from deepspeed.accelerator import get_accelerator

    from .run_lock import exit_with_launcher

    exit_with_launcher()
    init_distributed()
    import deepspeed
    from deepspeed import comm as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    device_type = get_accelerator().device_name()

    # ---- settings: DeepSpeed JSON + ours, one check of batch and layout
    from .ds_schema import check_deepspeed_keys, check_learning_rate

    ds_path = find_ds_config(cfg.deepspeed_config)
    ds_json = read_mapping(ds_path)
    check_deepspeed_keys(ds_json, ds_path)  # typos refused with the nearest key DeepSpeed knows
    ds_config, dims, plan, notes, compression = build_ds_config(cfg, ds_json, world_size=world,
                                                                device_type=device_type)
    check_learning_rate(ds_config, ds_path)
    for note in notes:
        log0("precision/settings: %s", note)
    coords = dims.coords(rank)
    log0("layout %s; batch: global %d = micro %d x grad_accum %d x data %d", dims.describe(), plan.global_batch,
         plan.micro_batch, plan.grad_accum, plan.data_parallel)
    out_dir = cfg.output_dir
    ckpt_dir = cfg.checkpoint.dir or os.path.join(out_dir, "checkpoints")

    # ---- the run folders are writable (checked now, not at the first save) and this run holds them alone
    from . import checkpoint as ckpt
    from .precision import training_dtype
    from .resume_checks import check_same_model, check_same_precision, rebuild_schedule
    from .run_lock import lock_run_folders

    ckpt.check_output_folder(out_dir, "output folder")
    ckpt.check_output_folder(ckpt_dir, "checkpoint folder")
    run_locks = lock_run_folders(out_dir, ckpt_dir, rank=rank)

    # ---- which checkpoint to resume from, and whether its files, layout and precision fit this run (before
    # DeepSpeed reads it); a ds_to_universal folder is loaded with DeepSpeed's load_universal, set here to match
    found = ckpt.find_resume(ckpt_dir, cfg.checkpoint.resume)
    if found:
        saved = ckpt.read_saved_checkpoint(*found, trusted=cfg.checkpoint.trust)
        check_same_precision(saved.dtype, training_dtype(ds_config), saved.path)
        ckpt.check_resume_layout(saved, pipe=dims.pipe, tensor=dims.tensor, data=dims.data,
                                 zero_stage=ds_config.get("zero_optimization", {}).get("stage", 0))
        section = ds_config.setdefault("checkpoint", {})
        if bool(section.get("load_universal", False)) != saved.universal:
            log0("checkpoint.load_universal set to %s in the DeepSpeed config: %s %s a universal checkpoint",
                 saved.universal, saved.path, "is" if saved.universal else "is not")
        section["load_universal"] = saved.universal
    with_ours = {**ds_config, "r1_compression": compression.to_dict()} if compression else ds_config  # + our section
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "train_config.json"), cfg.to_dict())
        atomic_write_json(os.path.join(out_dir, "ds_config.json"), with_ours)

    # ---- model and data
    model = build_model(cfg, device_type)
    config = model.config
    if found:
        check_same_model(saved.model_config, config.to_dict(), saved.path)
    dataset, seq_len = open_dataset(cfg.data.path, seq_len=cfg.data.seq_len, vocab_size=config.vocab_size,
                                    synthetic_sequences=cfg.data.synthetic_sequences, seed=cfg.seed)
    stages = resolve_stages(cfg, plan.global_batch)
    sampler = ProgressiveSampler(len(dataset), stages, cfg.seed)
    heldout = open_dataset(cfg.log.eval_data, seq_len=seq_len, vocab_size=config.vocab_size)[0] \
        if cfg.log.eval_every else None
    weight_decay = ds_config["optimizer"]["params"].get("weight_decay", 0.0)

    # ---- parallelize
    mpu = None
    if dims.pipeline_enabled:
        from .parallel.pipeline import build_pipeline, set_drop_path_rate

        module = build_pipeline(model, dims, partition_method=cfg.parallel.partition,
                                activation_checkpoint_interval=cfg.model.activation_checkpoint_interval)
        del model

        def drop_path(rate):
            set_drop_path_rate(module, rate, config.num_hidden_layers)
    else:
        from .parallel.pipeline import shard_for_tensor_parallel

        dims.check_model(num_hidden_layers=config.num_hidden_layers, level_heads=config.level_heads,
                         hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                         vocab_size=config.vocab_size)
        shard_for_tensor_parallel(model, dims)
        if dims.tensor > 1:
            # DeepSpeed's grid as mpu: gradients are reduced over the data group only, and the gradient norm
            # counts sharded parameters on every tensor rank and replicated ones once (a PipelineModule
            # brings its own grid)
            from deepspeed.runtime.pipe.topology import PipelineParallelGrid

            mpu = PipelineParallelGrid(topology=dims.topology())
        if cfg.model.activation_checkpoint_interval:
            model.gradient_checkpointing_enable()
        module = model
        drop_path = module.set_drop_path_rate

    if cfg.model.compile:
        log0("model.compile: torch.compile on %d decoder block(s) of this rank (the first steps include compiling)",
             compile_blocks(module))

    schedule = WarmupCosine(cfg.schedule.warmup_steps, cfg.schedule.steps, cfg.schedule.min_lr_ratio)
    engine, *_ = deepspeed.initialize(
        model=module, model_parameters=param_groups(module, weight_decay), config=ds_config, mpu=mpu,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
    pipeline = dims.pipeline_enabled
    from .parallel.deepspeed_patches import install_loss_scale_policy, needs_fp32_clip_patch, patch_fp32_grad_clipping

    if needs_fp32_clip_patch(engine):
        patch_fp32_grad_clipping(engine)
    if cfg.precision.loss_scale_policy:
        from .precision import ExponentLossScalePolicy

        install_loss_scale_policy(engine, ExponentLossScalePolicy.from_config(cfg.precision.loss_scale_policy))
    reducer = None
    if compression:
        from .parallel.comm_hook import install_compression

        reducer = install_compression(engine, compression)
    if engine.checkpoint_engine.is_decoupled():
        raise ConfigError("a decoupled (asynchronous) DeepSpeed checkpoint engine cannot be saved atomically by "
                          "r1-ds. Fix: remove the decoupled checkpoint setting from the DeepSpeed JSON.")

    # ---- resume
    start = 0
    if found:
        client = ckpt.load(engine, *found, trusted=cfg.checkpoint.trust)
        start = engine.global_steps
        # loading updated `schedule`'s fields in place with the saved ones: this run's schedule is a fresh object
        rebuild_schedule(engine.lr_scheduler, WarmupCosine(cfg.schedule.warmup_steps, cfg.schedule.steps,
                                                           cfg.schedule.min_lr_ratio),
                         ds_config["optimizer"]["params"]["lr"])
        sampler.check_resume(client.get("r1_sampler"), start)
        if reducer is not None and client.get("r1_compression") is not None:
            # error buffers are per data rank: a run with another data size starts them empty (with a warning)
            same_data = saved.layout is None or saved.layout[2] == dims.data
            reducer.load_state_dict(client["r1_compression"], strict=same_data)

    # ---- loop
    from .divergence import FiniteCheck, divergence_message
    from .flops import flops_per_token, peak_flops

    fpt = flops_per_token(config, seq_len)
    peak = cfg.log.peak_tflops * 1e12 if cfg.log.peak_tflops else peak_flops(training_dtype(ds_config))
    total = cfg.schedule.steps
    metrics = MetricsWriter(out_dir, total_steps=total, start_step=start, tensorboard=cfg.log.tensorboard,
                            progress=cfg.log.progress, enabled=rank == 0, monitor=engine.monitor)
    loads_data = not pipeline or engine.is_first_stage() or engine.is_last_stage()
    finite = FiniteCheck(every=cfg.log.check_finite_every, skips_overflow=training_dtype(ds_config) == "fp16")
    stage_idx = None
    t_last, steps_since, tokens_since = time.perf_counter(), 0, 0
    t_start = time.perf_counter()

    # what ds_to_universal needs to merge (and a later load to re-split) the tensor shards; also at tensor 1,
    # so that a universal checkpoint of a tensor-1 run knows how to split for a tensor-parallel one
    from .parallel.tensor_parallel import universal_checkpoint_info

    universal_info = universal_checkpoint_info(config, dims.tensor, pipeline=pipeline)

    def client_state(step: int) -> dict:
        state = {"universal_checkpoint_info": universal_info, "r1_sampler": sampler.state_dict(step),
                 "r1_layout": {"pipe": dims.pipe, "tensor": dims.tensor, "data": dims.data},
                 "r1_model_config": config.to_dict(), "r1_tokenizer_dir": dataset.tokenizer_dir,
                 "r1_train_config": cfg.to_dict()}
        if reducer is not None:
            state["r1_compression"] = reducer.state_dict()
        return state

    try:  # closed on a user error too: exit_process skips the interpreter's teardown
        for step in range(start, total):
            i = sampler.stage_index(step)
            if i != stage_idx:
                stage = sampler.stages[i]
                if engine.train_batch_size() != stage.global_batch:
                    engine.set_train_batch_size(stage.global_batch)  # same micro-batch, new grad-accumulation steps
                if len(sampler.stages) > 1:
                    log0("progressive stage %d/%d starts at step %d: global batch %d (grad_accum %d), first %.0f%% of "
                         "the data (%d sequences)", i + 1, len(sampler.stages), step, stage.global_batch,
                         engine.gradient_accumulation_steps(), 100 * stage.data_fraction, sampler.stage_size(i))
                stage_idx = i
            gas = engine.gradient_accumulation_steps()
            lr = engine.get_lr()[0]
            rate = cfg.schedule.drop_path_max * step / max(1, total - 1)
            drop_path(rate)
            torch.manual_seed(step_seed(cfg.seed, step, coords.data, coords.pipe))
            micro = sampler.micro_batches(step, data_rank=coords.data, data_size=dims.data,
                                          micro_batch=engine.train_micro_batch_size_per_gpu())
            batches = batch_iterator(dataset, micro, seq_len) if loads_data else None
            if pipeline:
                step_loss = train_step_pipeline(engine, batches)
            else:
                step_loss = train_step_data_parallel(engine, batches, gas)
            done = step + 1
            finite.observe(done, step_loss, engine.get_global_grad_norm())
            steps_since += 1
            tokens_since += engine.train_batch_size() * seq_len
            if done % cfg.log.every == 0 or done == total:
                loss = logged_loss(step_loss, pipeline=pipeline)
                now = time.perf_counter()
                tok_s = tokens_since / max(now - t_last, 1e-9)
                mfu = fpt * tok_s / (peak * world) if peak else None
                norm = engine.get_global_grad_norm()
                scaler = getattr(engine.optimizer, "loss_scaler", None)
                record = {"step": done, "loss": loss, "lr": lr, "global_batch": engine.train_batch_size(),
                          "grad_accum": gas, "stage": i + 1, "drop_path": rate, "tokens_per_s": tok_s,
                          "mfu": mfu, "grad_norm": float(norm) if norm is not None else None,
                          "loss_scale": float(scaler.cur_scale) if scaler is not None and hasattr(scaler, "cur_scale")
                          else None, "elapsed_s": now - t_start, "peak_mem_gib": peak_memory_gib()}
                if reducer is not None:
                    record.update({f"compression/{k}": v for k, v in (reducer.last_stats() or {}).items()})
                if heldout is not None and (done % cfg.log.eval_every == 0 or done == total):
                    from .evaluation.during_training import engine_heldout_loss

                    record["heldout_loss"] = engine_heldout_loss(engine, heldout, seq_len=seq_len, pipeline=pipeline,
                                                                 sequences=cfg.log.eval_sequences)
                metrics.write(record, monitor_step=engine.global_samples)
                metrics.progress(steps_since, {"loss": f"{loss:.4f}", "tok/s": f"{tok_s:,.0f}",
                                               "MFU": f"{mfu:.1%}" if mfu is not None else None})
                t_last, steps_since, tokens_since = now, 0, 0
            save_now = bool(cfg.checkpoint.every) and done % cfg.checkpoint.every == 0 and done != total
            if finite.due(done) or save_now or done == total:  # never save weights of a diverged run
                bad = finite.first_bad_step()
                if bad is not None:
                    raise DivergenceError(divergence_message(bad, last_good=ckpt.last_good(ckpt_dir),
                                                             ckpt_dir=ckpt_dir))
            if save_now:
                ckpt.save(engine, ckpt_dir, done, client_state(done), keep=cfg.checkpoint.keep)
        if start < total or not found:
            ckpt.save(engine, ckpt_dir, total, client_state(total), keep=cfg.checkpoint.keep)
    finally:
        metrics.close()
        for lock in run_locks:
            lock.release()
    log0("done: %d steps, checkpoints in %s, metrics in %s", total, ckpt_dir, metrics.path)
    return engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r1_ds.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    exit_process(main())
