"""`r1-ds train` / `python -m r1_ds.train`: train an R1 model with DeepSpeed.

    setup: init distributed -> settings check (r1_ds.ds_config) -> resume checks -> build model, lay it over the
           ranks (r1_ds.model_setup) -> deepspeed.initialize -> our DeepSpeed patches -> resume -> a `Run`
    loop:  per step: progressive stage -> DropPath rate and seed -> one optimizer step -> metrics (and held-out
           loss) -> divergence check -> checkpoint; a final checkpoint

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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from data_prep.atomic import atomic_write_json

from . import checkpoint as ckpt
from . import run_lock
from .align.trainer import train_align
from .checkpoint import CheckpointError, SavedCheckpoint
from .config import ConfigError, TrainConfig, check_compiled_length, load_train_config, read_mapping
from .data import DataError, ProgressiveSampler, batch_iterator, open_dataset
from .distributed import exit_process, init_distributed, peak_memory_gib, shutdown_distributed, under_accelerate
from .divergence import DivergenceError, FiniteCheck, divergence_message
from .ds_config import build_ds_config, find_ds_config
from .ds_schema import check_deepspeed_keys, check_learning_rate
from .evaluation.during_training import engine_heldout_loss
from .extras import MissingExtra
from .flops import flops_per_token, peak_flops
from .metrics import MetricsWriter, log0
from .model import R1Config, R1ConfigError
from .model_setup import build_model, compile_blocks, parallelize, param_groups
from .parallel.comm_hook import install_compression
from .parallel.compression_config import CompressionConfigError
from .parallel.deepspeed_patches import install_loss_scale_policy, needs_fp32_clip_patch, patch_fp32_grad_clipping
from .parallel.state_dict_mapping import universal_checkpoint_info
from .parallel.topology import LayoutError, ParallelDims, RankCoords
from .precision import ExponentLossScalePolicy, PrecisionError, training_dtype
from .resume_checks import check_same_model, check_same_precision, rebuild_schedule
from .run_lock import RunLockError
from .schedule import WarmupCosine, drop_path_rate, resolve_stages, step_seed
from .train_args import add_arguments, cli_overrides

log = logging.getLogger("r1_ds.train")

__all__ = ["Run", "add_arguments", "cli_overrides", "loop", "main", "run", "setup", "train", "user_errors"]


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


# ----------------------------------------------------------------------------- the run: what the loop reads


@dataclass
class Run:
    """A training run after `setup`: the engine, its data and schedule, the writers and the resume state."""

    cfg: TrainConfig
    engine: Any  # DeepSpeedEngine, or PipelineEngine when dims.pipeline_enabled
    dims: ParallelDims
    coords: RankCoords  # this rank's place in the layout
    model_config: R1Config  # read at each save: the model's set_drop_path_rate records the rate in it
    dataset: Any  # r1_ds.data: packed shards or synthetic tokens
    seq_len: int
    sampler: ProgressiveSampler
    heldout: Any | None  # held-out rows (log.eval_data), None when log.eval_every is 0
    set_drop_path: Callable[[float], None]  # this rank's module's DropPath setter
    reducer: Any | None  # the compressed all-reduce (r1_compression in the DeepSpeed JSON), else None
    metrics: MetricsWriter
    finite: FiniteCheck
    flops_per_token: float
    peak_flops: float | None  # per rank; None: unknown device, no MFU
    ckpt_dir: str
    start: int  # the first step to train: the resumed checkpoint's step, else 0
    resumed: bool
    locks: list  # run_lock.RunLock of the output and checkpoint folders
    universal_info: dict  # what ds_to_universal needs to merge (and a later load to re-split) the tensor shards

    @property
    def pipeline(self) -> bool:
        return self.dims.pipeline_enabled

    def batches(self, step: int):
        """This rank's micro-batches of `step` (None on middle pipeline stages, which read no data)."""
        micro = self.sampler.micro_batches(
            step,
            data_rank=self.coords.data,
            data_size=self.dims.data,
            micro_batch=self.engine.train_micro_batch_size_per_gpu(),
        )
        loads_data = not self.pipeline or self.engine.is_first_stage() or self.engine.is_last_stage()
        return batch_iterator(self.dataset, micro, self.seq_len) if loads_data else None

    def client_state(self, step: int) -> dict:
        """What a checkpoint of `step` carries beside DeepSpeed's state (read back by resume and export)."""
        state = {
            "universal_checkpoint_info": self.universal_info,
            "r1_sampler": self.sampler.state_dict(step),
            "r1_layout": {"pipe": self.dims.pipe, "tensor": self.dims.tensor, "data": self.dims.data},
            "r1_model_config": self.model_config.to_dict(),
            "r1_tokenizer_dir": self.dataset.tokenizer_dir,
            "r1_train_config": self.cfg.to_dict(),
        }
        if self.reducer is not None:
            state["r1_compression"] = self.reducer.state_dict()
        return state

    def close(self) -> None:
        self.metrics.close()
        for lock in self.locks:
            lock.release()


# ----------------------------------------------------------------------------- setup


def setup(cfg: TrainConfig) -> Run:
    """Everything before the first step; the process group, DeepSpeed engine and run folders it sets up are
    this rank's until `Run.close` (folders) and `shutdown_distributed` (the group)."""
    if under_accelerate() and cfg.parallel.pipe > 1:
        raise ConfigError(
            f"parallel.pipe={cfg.parallel.pipe} under `accelerate launch`: accelerate drives DeepSpeed's "
            "forward/backward/step, which the pipeline engine does not offer. Fix: set parallel.pipe=1 (data "
            "parallel + ZeRO), or launch pipelines with `deepspeed` or `torchrun`."
        )

    # ---- distributed start-up; a launched rank ends with its launcher
    run_lock.exit_with_launcher()
    init_distributed()
    import deepspeed  # imported once a run starts: `r1-ds train --help` and the settings tests stay light
    from deepspeed import comm as dist
    from deepspeed.accelerator import get_accelerator

    rank, world = dist.get_rank(), dist.get_world_size()
    device_type = get_accelerator().device_name()

    # ---- settings: DeepSpeed JSON + ours, one check of batch and layout
    ds_path = find_ds_config(cfg.deepspeed_config)
    ds_json = read_mapping(ds_path)
    check_deepspeed_keys(ds_json, ds_path)  # typos refused with the nearest key DeepSpeed knows
    ds_config, dims, plan, notes, compression = build_ds_config(cfg, ds_json, world_size=world, device_type=device_type)
    check_learning_rate(ds_config, ds_path)
    for note in notes:
        log0("precision/settings: %s", note)
    log0(
        "layout %s; batch: global %d = micro %d x grad_accum %d x data %d",
        dims.describe(),
        plan.global_batch,
        plan.micro_batch,
        plan.grad_accum,
        plan.data_parallel,
    )
    out_dir = cfg.output_dir
    ckpt_dir = cfg.checkpoint.dir or os.path.join(out_dir, "checkpoints")

    # ---- the run folders are writable (checked now, not at the first save) and this run holds them alone
    ckpt.check_output_folder(out_dir, "output folder")
    ckpt.check_output_folder(ckpt_dir, "checkpoint folder")
    locks = run_lock.lock_run_folders(out_dir, ckpt_dir, rank=rank)

    # ---- the checkpoint to resume from fits this run (before DeepSpeed reads it)
    found = ckpt.find_resume(ckpt_dir, cfg.checkpoint.resume)
    saved = check_resume(found, ds_config, dims, trusted=cfg.checkpoint.trust) if found else None
    with_ours = {**ds_config, "r1_compression": compression.to_dict()} if compression else ds_config  # + our section
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "train_config.json"), cfg.to_dict())
        atomic_write_json(os.path.join(out_dir, "ds_config.json"), with_ours)

    # ---- model and data
    model = build_model(cfg, device_type)
    config = model.config
    if saved:
        check_same_model(saved.model_config, config.to_dict(), saved.path)
    dataset, seq_len = open_dataset(
        cfg.data.path,
        seq_len=cfg.data.seq_len,
        vocab_size=config.vocab_size,
        synthetic_sequences=cfg.data.synthetic_sequences,
        seed=cfg.seed,
    )
    if cfg.data.seq_len is None:  # the shards' length (a set data.seq_len was checked with the DeepSpeed settings)
        check_compiled_length(cfg, seq_len, device_type, source=f"the seq_len of the shards in {cfg.data.path}")
    sampler = ProgressiveSampler(len(dataset), resolve_stages(cfg, plan.global_batch), cfg.seed)
    heldout = (
        open_dataset(cfg.log.eval_data, seq_len=seq_len, vocab_size=config.vocab_size)[0]
        if cfg.log.eval_every
        else None
    )
    weight_decay = ds_config["optimizer"]["params"].get("weight_decay", 0.0)

    # ---- lay the model over the ranks, then DeepSpeed and our changes to it (r1_ds/parallel/deepspeed_patches.py)
    module, mpu, set_drop_path = parallelize(
        model,
        dims,
        partition=cfg.parallel.partition,
        activation_checkpoint_interval=cfg.model.activation_checkpoint_interval,
    )
    del model  # a pipeline rank keeps only its stage
    if cfg.model.compile:
        log0(
            "model.compile: torch.compile on %d decoder block(s) of this rank (the first steps include compiling)",
            compile_blocks(module),
        )
    s = cfg.schedule
    engine, *_ = deepspeed.initialize(
        model=module,
        model_parameters=param_groups(module, weight_decay),
        config=ds_config,
        mpu=mpu,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, WarmupCosine(s.warmup_steps, s.steps, s.min_lr_ratio)
        ),
    )
    if needs_fp32_clip_patch(engine):
        patch_fp32_grad_clipping(engine)
    if cfg.precision.loss_scale_policy:
        install_loss_scale_policy(engine, ExponentLossScalePolicy.from_config(cfg.precision.loss_scale_policy))
    reducer = install_compression(engine, compression) if compression else None
    if engine.checkpoint_engine.is_decoupled():
        raise ConfigError(
            "a decoupled (asynchronous) DeepSpeed checkpoint engine cannot be saved atomically by "
            "r1-ds. Fix: remove the decoupled checkpoint setting from the DeepSpeed JSON."
        )

    # ---- resume
    start = 0
    if found:
        client = ckpt.load(engine, *found, trusted=cfg.checkpoint.trust)
        start = engine.global_steps
        # loading updated the schedule's fields in place with the saved ones: this run's schedule is a fresh object
        rebuild_schedule(
            engine.lr_scheduler,
            WarmupCosine(s.warmup_steps, s.steps, s.min_lr_ratio),
            ds_config["optimizer"]["params"]["lr"],
        )
        sampler.check_resume(client.get("r1_sampler"), start)
        if reducer is not None and client.get("r1_compression") is not None:
            # error buffers are per data rank: a run with another data size starts them empty (with a warning)
            same_data = saved.layout is None or saved.layout[2] == dims.data
            reducer.load_state_dict(client["r1_compression"], strict=same_data)

    dtype = training_dtype(ds_config)
    return Run(
        cfg=cfg,
        engine=engine,
        dims=dims,
        coords=dims.coords(rank),
        model_config=config,
        dataset=dataset,
        seq_len=seq_len,
        sampler=sampler,
        heldout=heldout,
        set_drop_path=set_drop_path,
        reducer=reducer,
        metrics=MetricsWriter(
            out_dir,
            total_steps=s.steps,
            start_step=start,
            tensorboard=cfg.log.tensorboard,
            progress=cfg.log.progress,
            enabled=rank == 0,
            monitor=engine.monitor,
        ),
        finite=FiniteCheck(every=cfg.log.check_finite_every, skips_overflow=dtype == "fp16"),
        flops_per_token=flops_per_token(config, seq_len),
        peak_flops=cfg.log.peak_tflops * 1e12 if cfg.log.peak_tflops else peak_flops(dtype),
        ckpt_dir=ckpt_dir,
        start=start,
        resumed=bool(found),
        locks=locks,
        # also at tensor 1, so that a universal checkpoint of a tensor-1 run knows how to split for a tensor-parallel one
        universal_info=universal_checkpoint_info(config, dims.tensor, pipeline=dims.pipeline_enabled),
    )


def check_resume(found: tuple[str, str], ds_config: dict, dims: ParallelDims, *, trusted: bool) -> SavedCheckpoint:
    """Whether the checkpoint `found` (folder, tag) fits this run's files, layout and precision, before DeepSpeed
    reads it; a ds_to_universal folder is loaded with DeepSpeed's load_universal, set in `ds_config` to match."""
    saved = ckpt.read_saved_checkpoint(*found, trusted=trusted)
    check_same_precision(saved.dtype, training_dtype(ds_config), saved.path)
    ckpt.check_resume_layout(
        saved,
        pipe=dims.pipe,
        tensor=dims.tensor,
        data=dims.data,
        zero_stage=ds_config.get("zero_optimization", {}).get("stage", 0),
    )
    section = ds_config.setdefault("checkpoint", {})
    if bool(section.get("load_universal", False)) != saved.universal:
        log0(
            "checkpoint.load_universal set to %s in the DeepSpeed config: %s %s a universal checkpoint",
            saved.universal,
            saved.path,
            "is" if saved.universal else "is not",
        )
    section["load_universal"] = saved.universal
    return saved


# ----------------------------------------------------------------------------- the loop


def loop(run: Run) -> None:
    """Train from `run.start` to schedule.steps: each step enters its progressive stage, sets its DropPath rate
    and seed, takes one optimizer step, logs, checks for divergence and checkpoints; then the final checkpoint."""
    cfg, engine, sampler = run.cfg, run.engine, run.sampler
    total = cfg.schedule.steps
    stage_idx = None
    t_start = t_last = time.perf_counter()
    steps_since = tokens_since = 0
    for step in range(run.start, total):
        i = sampler.stage_index(step)
        if i != stage_idx:
            enter_stage(engine, sampler, i, step)
            stage_idx = i
        gas = engine.gradient_accumulation_steps()
        lr = engine.get_lr()[0]
        rate = drop_path_rate(step, total=total, max_rate=cfg.schedule.drop_path_max)
        run.set_drop_path(rate)
        torch.manual_seed(step_seed(cfg.seed, step, run.coords.data, run.coords.pipe))
        batches = run.batches(step)
        if run.pipeline:
            step_loss = train_step_pipeline(engine, batches)
        else:
            step_loss = train_step_data_parallel(engine, batches, gas)
        done = step + 1
        run.finite.observe(done, step_loss, engine.get_global_grad_norm())
        steps_since += 1
        tokens_since += engine.train_batch_size() * run.seq_len

        if done % cfg.log.every == 0 or done == total:
            loss = logged_loss(step_loss, pipeline=run.pipeline)
            now = time.perf_counter()
            tok_s = tokens_since / max(now - t_last, 1e-9)
            record = step_record(
                run,
                done=done,
                loss=loss,
                lr=lr,
                gas=gas,
                stage=i + 1,
                drop_path=rate,
                tok_s=tok_s,
                elapsed_s=now - t_start,
            )
            run.metrics.write(record, monitor_step=engine.global_samples)
            run.metrics.progress(
                steps_since,
                {
                    "loss": f"{loss:.4f}",
                    "tok/s": f"{tok_s:,.0f}",
                    "MFU": f"{record['mfu']:.1%}" if record["mfu"] is not None else None,
                },
            )
            t_last, steps_since, tokens_since = now, 0, 0

        save_now = bool(cfg.checkpoint.every) and done % cfg.checkpoint.every == 0 and done != total
        if run.finite.due(done) or save_now or done == total:  # never save weights of a diverged run
            bad = run.finite.first_bad_step()
            if bad is not None:
                raise DivergenceError(
                    divergence_message(bad, last_good=ckpt.last_good(run.ckpt_dir), ckpt_dir=run.ckpt_dir)
                )
        if save_now:
            ckpt.save(engine, run.ckpt_dir, done, run.client_state(done), keep=cfg.checkpoint.keep)
    if run.start < total or not run.resumed:
        ckpt.save(engine, run.ckpt_dir, total, run.client_state(total), keep=cfg.checkpoint.keep)


def enter_stage(engine, sampler: ProgressiveSampler, i: int, step: int) -> None:
    """Progressive stage `i` starts at `step`: its global batch (same micro-batch, new grad-accumulation steps)."""
    stage = sampler.stages[i]
    if engine.train_batch_size() != stage.global_batch:
        engine.set_train_batch_size(stage.global_batch)
    if len(sampler.stages) > 1:
        log0(
            "progressive stage %d/%d starts at step %d: global batch %d (grad_accum %d), first %.0f%% of "
            "the data (%d sequences)",
            i + 1,
            len(sampler.stages),
            step,
            stage.global_batch,
            engine.gradient_accumulation_steps(),
            100 * stage.data_fraction,
            sampler.stage_size(i),
        )


def step_record(
    run: Run,
    *,
    done: int,
    loss: float,
    lr: float,
    gas: int,
    stage: int,
    drop_path: float,
    tok_s: float,
    elapsed_s: float,
) -> dict:
    """The metrics.jsonl record of step `done` (and the held-out loss on log.eval_every steps)."""
    engine, cfg = run.engine, run.cfg
    mfu = run.flops_per_token * tok_s / (run.peak_flops * run.dims.world_size) if run.peak_flops else None
    norm = engine.get_global_grad_norm()
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    record = {
        "step": done,
        "loss": loss,
        "lr": lr,
        "global_batch": engine.train_batch_size(),
        "grad_accum": gas,
        "stage": stage,
        "drop_path": drop_path,
        "tokens_per_s": tok_s,
        "mfu": mfu,
        "grad_norm": float(norm) if norm is not None else None,
        "loss_scale": float(scaler.cur_scale) if scaler is not None and hasattr(scaler, "cur_scale") else None,
        "elapsed_s": elapsed_s,
        "peak_mem_gib": peak_memory_gib(),
    }
    if run.reducer is not None:
        record.update({f"compression/{k}": v for k, v in (run.reducer.last_stats() or {}).items()})
    if run.heldout is not None and (done % cfg.log.eval_every == 0 or done == cfg.schedule.steps):
        record["heldout_loss"] = engine_heldout_loss(
            engine, run.heldout, seq_len=run.seq_len, pipeline=run.pipeline, sequences=cfg.log.eval_sequences
        )
    return record


# ----------------------------------------------------------------------------- entry points


def train(cfg: TrainConfig):
    """Train per `cfg`; returns the DeepSpeed engine (tests and notebooks inspect it)."""
    if cfg.align.enabled:  # image-text-code alignment, alone or with the LM loss (r1_ds/align/trainer.py)
        return train_align(cfg)
    run = setup(cfg)
    try:  # closed on a user error too: exit_process skips the interpreter's teardown
        loop(run)
    finally:
        run.close()
    log0("done: %d steps, checkpoints in %s, metrics in %s", cfg.schedule.steps, run.ckpt_dir, run.metrics.path)
    return run.engine


def user_errors() -> tuple[type[Exception], ...]:
    """Errors of bad input: `r1-ds train` prints their one-line message and exits with code 2."""
    return (
        ConfigError,
        DataError,
        PrecisionError,
        CheckpointError,
        LayoutError,
        R1ConfigError,
        CompressionConfigError,
        RunLockError,
        MissingExtra,
    )


def run(args: argparse.Namespace) -> int:
    """`r1-ds train`: settings from file + command line, then `train`. Bad settings exit with code 2
    and one readable message instead of a traceback."""
    try:
        overrides = cli_overrides(args)
        cfg = load_train_config(args.config, overrides)
        acc_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if (
            under_accelerate()
            and acc_file
            and "deepspeed_config" not in overrides
            and not (args.config and "deepspeed_config" in read_mapping(args.config))
        ):
            cfg.deepspeed_config = acc_file  # the JSON accelerate was given, unless the CLI or file names one
        train(cfg)
    except user_errors() as err:  # the same on every rank: say it once
        log.log(
            logging.ERROR if os.environ.get("RANK", "0") == "0" else logging.DEBUG, "%s: %s", type(err).__name__, err
        )
        code = 2
    except DivergenceError as err:  # not a user error, but one line too; a failed run (nothing saved after it)
        log.log(logging.ERROR if os.environ.get("RANK", "0") == "0" else logging.DEBUG, "%s", err)
        code = 3
    else:
        code = 0
    shutdown_distributed()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r1_ds.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    exit_process(main())
