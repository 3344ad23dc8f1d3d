"""Compressed data-parallel gradient reduction, installed into a DeepSpeed engine.

    ds_config, compression = compression_config(ds_json)  # the "r1_compression" section, parsed once
    engine, *_ = deepspeed.initialize(model=model, config=ds_config, ...)
    reducer = install_compression(engine, compression)    # None when the section is absent or disabled
    ...
    stats = reducer.last_stats()                           # bytes sent vs dense, ratio, seconds; log them
    client_state["r1_compression"] = reducer.state_dict()  # collective: call it on every rank
    reducer.load_state_dict(client_state["r1_compression"])  # after engine.load_checkpoint

DeepSpeed 0.19.8 has no communication-hook API. Every supported configuration reduces data-parallel gradients in
`DeepSpeedEngine.buffered_allreduce_fallback` (plain engine at ZeRO-0, PipelineEngine at ZeRO-0, and
BF16_Optimizer: bf16 at ZeRO-0 under a pipeline, or bf16 with fp32 gradient accumulation at ZeRO-1); it runs once
per optimizer step, at the gradient-accumulation boundary, before clipping and the optimizer. We replace that method
on the engine instance (`r1_ds.parallel.deepspeed_patches.replace_gradient_reduction`).

This module is the glue (gradients in, gradients out, error buffers, checkpoint state). The parts it calls are
pure and tested alone: the settings (`compression_config`), when to compress (`comm_schedule`), which gradients
form a bucket (`comm_plan`), the reduction of one bucket (`comm_reduce`) and its tensor math (`compression`);
docs/compression.md explains the algorithm.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .comm_plan import Bucket, pieces, plan_buckets
from .comm_reduce import Wire, allgather_reduce, leader_reduce, ring_bytes
from .comm_schedule import CompressionSchedule
from .compression import sample_positions, select_indices
from .compression_config import SECTION, CompressionConfig, CompressionConfigError, compression_config
from .deepspeed_patches import replace_gradient_reduction

STATE_VERSION = 1
_GATHER_SLICE = 1 << 26  # elements per all-gather when saving error buffers (bounds the temporary memory)

__all__ = ["CompressedReducer", "install_compression"]


def _check_engine(engine) -> None:
    """Refuse, with the reason and the fix, every configuration whose reduction does not go through our method."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    if not callable(getattr(engine, "buffered_allreduce_fallback", None)):
        raise RuntimeError(
            f"{SECTION}: this DeepSpeed engine has no buffered_allreduce_fallback; the hook is written "
            "against deepspeed==0.19.8. Install that version or disable the section."
        )
    stage = engine.zero_optimization_stage()
    if stage >= 2:
        raise CompressionConfigError(
            f"{SECTION}: zero_optimization.stage={stage} is not supported: ZeRO-2/3 partition gradients "
            "and reduce them in per-parameter hooks on every micro-step, out of this hook's reach. "
            "Set zero_optimization.stage to 0 or 1, or set r1_compression.enabled to false."
        )
    if stage == 1 and not isinstance(engine.optimizer, BF16_Optimizer):
        raise CompressionConfigError(
            f"{SECTION}: ZeRO-1 with {type(engine.optimizer).__name__} is not supported: it reduce-scatters gradient "
            "slices to their owner ranks (reduce_gradients/average_tensor) in topology-dependent buckets, where top-k "
            "with per-rank error feedback has no stable place. Use bf16 with "
            '"data_types": {"grad_accum_dtype": "fp32"} (BF16_Optimizer, which also partitions the optimizer state '
            "like ZeRO-1), or zero_optimization.stage 0."
        )
    if engine.fp16_enabled():
        raise CompressionConfigError(
            f"{SECTION}: fp16 is not supported: loss-scaled gradients put inf/NaN into the error buffers "
            'on overflow steps. Use bf16 ("bf16": {"enabled": true}).'
        )
    if getattr(engine, "has_moe_layers", False):
        raise CompressionConfigError(
            f"{SECTION}: models with MoE layers are not supported (expert gradients reduce over expert "
            "groups). Disable r1_compression for MoE models."
        )
    if getattr(engine, "sequence_parallel_size", 1) != 1:
        raise CompressionConfigError(
            f"{SECTION}: sequence_parallel_size={engine.sequence_parallel_size} is not supported; "
            "use sequence_parallel_size 1 or disable r1_compression."
        )


def install_compression(engine, compression: CompressionConfig | dict | str | None) -> CompressedReducer | None:
    """Patch `engine` (DeepSpeedEngine or PipelineEngine, after deepspeed.initialize) to reduce data-parallel gradients
    compressed, per `compression`: the parsed section (`compression_config`), or the DeepSpeed dict / JSON path it
    is parsed from here. None when the section is absent or disabled."""
    cfg = (
        compression
        if isinstance(compression, CompressionConfig) or compression is None
        else compression_config(compression)[1]
    )
    if cfg is None or not cfg.enabled:
        return None
    _check_engine(engine)
    if getattr(engine, "_r1_compression", None) is not None:
        raise RuntimeError(f"{SECTION}: already installed on this engine; call install_compression once per engine")
    reducer = CompressedReducer(
        engine, cfg, engine.buffered_allreduce_fallback
    )  # the original: warm-up, dense fallback
    # reducer.reduce is looked up per call, so a wrapper set on the reducer later applies too
    replace_gradient_reduction(engine, lambda elements_per_buffer: reducer.reduce(elements_per_buffer))
    engine._r1_compression = reducer
    _log(
        f"{SECTION}: installed (mode={cfg.mode}, topk_ratio={cfg.topk_ratio}, bits={cfg.bits}, "
        f"error_feedback={cfg.error_feedback}, warmup_steps={cfg.warmup_steps}, auto_fallback={cfg.auto_fallback}, "
        f"timing={cfg.timing}, dp_size={reducer.dp_size}, optimizer={type(engine.optimizer).__name__})"
    )
    return reducer


def _log(msg: str) -> None:
    from deepspeed.utils import log_dist

    log_dist(msg, ranks=[0])


class CompressedReducer:
    """Replaces `engine.buffered_allreduce_fallback`: gathers the gradients, follows the schedule (dense or
    compressed, comm_schedule), reduces each bucket of the plan (comm_plan) with the reduce functions (comm_reduce),
    and holds the error buffers and the per-step statistics."""

    def __init__(self, engine, cfg: CompressionConfig, stock):
        import deepspeed.comm as dist
        from deepspeed.accelerator import get_accelerator

        self.cfg = cfg
        self._engine = engine
        self._stock = stock
        self._dist = dist
        self._sync = get_accelerator().synchronize
        if engine.pipeline_parallelism:
            self.dp_group = engine.mpu.get_data_parallel_group()
        else:
            from deepspeed.utils import groups

            self.dp_group = groups._get_sequence_data_parallel_group()
        self.dp_size = dist.get_world_size(group=self.dp_group)
        self.dp_rank = dist.get_rank(group=self.dp_group)
        self._average = bool(getattr(engine, "gradient_average", True))
        self.step = 0  # reductions done (one per optimizer step)
        self.schedule = CompressionSchedule(
            warmup_steps=cfg.warmup_steps,
            auto_fallback=cfg.auto_fallback,
            probe_steps=cfg.probe_steps,
            min_speedup=cfg.min_speedup,
        )
        self.errors: dict[str, torch.Tensor] = {}  # bucket key -> (numel,) fp32 error buffer on the grad device
        self._pending_errors: dict[str, torch.Tensor] = {}  # loaded before the buckets exist
        self._buckets: list[Bucket] | None = None
        self._samples: dict[str, torch.Tensor] = {}
        self._stats: dict[str, Any] = {}

    # -- schedule -------------------------------------------------------------------------------------------------

    @property
    def decision(self) -> str | None:
        """None until auto_fallback decides; then "compressed" or "dense"."""
        return self.schedule.decision

    @property
    def probe(self) -> dict[str, float]:
        """Median seconds per reduction the decision was made on: {"dense_s", "compressed_s", "speedup"}."""
        return self.schedule.probe

    @property
    def compression_start(self) -> int:
        return self.schedule.compression_start

    def _decide(self) -> None:
        """Agree the probe's medians over the world (slowest rank) and keep the faster reduction; a collective."""
        t = torch.tensor(self.schedule.medians(), dtype=torch.float64, device=self._grad_device())
        # the whole world agrees, so that pipeline stages and TP peers (tied / replicated weights) choose alike
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX)
        dense, comp = t.tolist()
        decision = self.schedule.decide(dense, comp)
        speedup, floor = self.schedule.probe["speedup"], self.cfg.min_speedup
        if decision == "compressed":
            _log(
                f"{SECTION}: keeping compression: reduction {dense * 1e3:.1f} ms dense vs {comp * 1e3:.1f} ms "
                f"compressed ({speedup:.2f}x >= min_speedup {floor})"
            )
        else:
            _log(
                f"{SECTION}: stepping aside, dense all-reduce from step {self.step}: reduction {dense * 1e3:.1f} ms "
                f"dense vs {comp * 1e3:.1f} ms compressed ({speedup:.2f}x < min_speedup {floor}); "
                "the link is fast enough that compressing costs more than it saves"
            )

    # -- entry point ----------------------------------------------------------------------------------------------

    def reduce(self, elements_per_buffer: int) -> None:
        """One data-parallel gradient reduction (called by the patched engine method at each GAS boundary)."""
        if self.schedule.due(self.step):
            self._decide()
        phase = self.schedule.phase(self.step)
        pairs = self._param_grads()
        if self._buckets is None:
            self._buckets = self._plan(pairs)
            self._install_pending_errors()
        # the device is synchronised only where a time is wanted: every reduction with `timing`, the probe's
        # few otherwise; the hot path does not wait for the device
        timed = self.cfg.timing or self.schedule.timed_side(self.step) is not None
        if timed:
            self._sync()
        t0 = time.perf_counter()
        if phase.startswith("compressed"):
            stats = self._reduce_compressed(pairs, elements_per_buffer)
        else:
            stats = self._reduce_dense(pairs, elements_per_buffer)
        if timed:
            self._sync()
        elapsed = time.perf_counter() - t0
        self.schedule.record(self.step, elapsed)
        comm_s = stats["comm_s"]
        stats.update(
            step=self.step,
            mode=phase,
            reduce_s=elapsed,
            compress_s=max(0.0, elapsed - comm_s) if comm_s is not None else None,
        )
        stats["ratio"] = stats["dense_bytes"] / stats["bytes_sent"] if stats["bytes_sent"] else 1.0
        stats["ratio_vs_fp32"] = stats["dense_fp32_bytes"] / stats["bytes_sent"] if stats["bytes_sent"] else 1.0
        self._stats = stats
        self.step += 1

    def last_stats(self) -> dict[str, Any]:
        """The last reduction: step, mode, bytes_sent (this rank, ring model), payload_bytes (handed to collectives),
        dense_bytes (what DeepSpeed's all-reduce would send, in its communication dtype), dense_fp32_bytes, ratio
        (dense_bytes / bytes_sent), ratio_vs_fp32, elements, selected, reduce_s, comm_s, compress_s (reduce_s - comm_s:
        selection, quantization, error feedback, copies). With `timing` off comm_s and compress_s are None and
        reduce_s is host time (the device is not waited for)."""
        return dict(self._stats)

    # -- gradients and buckets ------------------------------------------------------------------------------------

    def _param_grads(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """(parameter, gradient tensor to reduce in place), in a deterministic order, like DeepSpeed's stock path."""
        from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

        opt = self._engine.optimizer
        if isinstance(opt, BF16_Optimizer):  # persistent fp32 accumulation buffers, views per parameter
            return [(p, g) for ps, gs in zip(opt.bf16_groups, opt.fp32_groups_gradients) for p, g in zip(ps, gs)]
        pairs = []
        for p in self._engine.module.parameters():
            if not p.requires_grad or p.numel() == 0:
                continue
            if p.grad is None:  # every rank must reduce the same sizes (as DeepSpeed does)
                p.grad = torch.zeros_like(p)
            if p.grad.is_sparse:
                raise CompressionConfigError(
                    f"{SECTION}: sparse gradients (nn.Embedding(sparse=True)) are not supported; "
                    "use dense embeddings or disable r1_compression."
                )
            pairs.append((p, p.grad.data))
        return pairs

    def _plan(self, pairs) -> list[Bucket]:
        from deepspeed.runtime.utils import is_model_parallel_parameter

        tied = {
            id(p): f"tied:{name}.{pname}"
            for name, module in getattr(self._engine.module, "tied_modules", {}).items()
            for pname, p in module.named_parameters()
        }
        return plan_buckets(
            pairs, dense_1d=self.cfg.dense_1d, tied=tied, is_tensor_parallel=is_model_parallel_parameter
        )

    def _grad_device(self) -> torch.device:
        pairs = self._param_grads()
        return pairs[0][1].device if pairs else torch.device("cpu")

    def _wire(self) -> Wire:
        return Wire(self._dist, self.dp_group, self.dp_size, self.dp_rank, sync=self._sync if self.cfg.timing else None)

    # -- dense path -----------------------------------------------------------------------------------------------

    def _comm_elem_size(self) -> int:
        """Bytes per element of DeepSpeed's dense all-reduce (its communication_data_type)."""
        return self._engine.communication_data_type.itemsize

    def _dense_bytes(self, numel: int) -> tuple[float, float]:
        """(wire bytes of DeepSpeed's all-reduce in its communication dtype, the same in fp32) for `numel`."""
        return (
            ring_bytes("all_reduce", numel * self._comm_elem_size(), self.dp_size),
            ring_bytes("all_reduce", numel * 4, self.dp_size),
        )

    def _reduce_dense(self, pairs, elements_per_buffer: int) -> dict[str, Any]:
        if self.errors:  # leaving compression: hand the carried error to this dense step, so nothing is lost
            grads = {id(p): g for p, g in pairs}
            for b in self._buckets:
                err = self.errors.pop(b.key, None)
                if err is None:
                    continue
                for g, e in pieces(err, [grads[id(p)] for p in b.params]):
                    g.add_(e.view_as(g).to(g.dtype))
            self.errors.clear()
        numel = sum(g.numel() for _, g in pairs)
        wire = self._wire()
        wire.run(
            "all_reduce",
            numel * self._comm_elem_size(),
            self._stock,
            grads=None,
            elements_per_buffer=elements_per_buffer,
        )
        dense, dense32 = self._dense_bytes(numel)
        return dict(
            bytes_sent=dense,
            payload_bytes=numel * self._comm_elem_size(),
            dense_bytes=dense,
            dense_fp32_bytes=dense32,
            elements=numel,
            selected=numel,
            comm_s=wire.stats["comm_s"],
        )

    # -- compressed path ------------------------------------------------------------------------------------------

    def _reduce_compressed(self, pairs, elements_per_buffer: int) -> dict[str, Any]:
        wire = self._wire()
        grads = {id(p): g for p, g in pairs}
        dense_grads = []
        for b in self._buckets:
            gs = [grads[id(p)] for p in b.params]
            if b.dense:
                dense_grads.extend(gs)
                continue
            x = self._bucket_input(b.key, gs)
            kw = dict(
                select=lambda v, b=b: self._select(b, v),
                topk_ratio=self.cfg.topk_ratio,
                quant_chunk=self.cfg.quant_chunk,
                error_feedback=self.cfg.error_feedback,
                average=self._average,
            )
            if self.cfg.mode == "leader":
                out, err = leader_reduce(x, wire, step=self.step, **kw)
            else:
                out, err = allgather_reduce(x, wire, **kw)
            if self.cfg.error_feedback:
                self.errors[b.key] = err
            for g, o in pieces(out, gs):
                g.copy_(o.view_as(g))
        if dense_grads:
            numel = sum(g.numel() for g in dense_grads)
            wire.run(
                "all_reduce",
                numel * self._comm_elem_size(),
                self._engine._reduce_non_expert_gradients,
                dense_grads,
                elements_per_buffer,
            )
            wire.stats["selected"] += numel
        acc = dict(wire.stats)
        numel = sum(g.numel() for _, g in pairs)
        acc["dense_bytes"], acc["dense_fp32_bytes"] = self._dense_bytes(numel)
        acc["elements"] = numel
        return acc

    def _bucket_input(self, key: str, gs: list[torch.Tensor]) -> torch.Tensor:
        """x = grad + carried error, (n,) fp32: C.add_error without its copy. With error feedback the carried buffer
        is replaced by the new error at the end of the step, so the gradient is added into it in place (one pass, no
        gradient-sized allocation per step; fp32 addition commutes, so x is bit-identical either way)."""
        carried = self.errors.get(key)  # only ever set with error feedback on (step and load_state_dict)
        if carried is None:
            return torch.cat([g.reshape(-1).float() for g in gs])
        for g, c in pieces(carried, gs):
            c += g.reshape(-1)
        return carried

    def _select(self, b: Bucket, x: torch.Tensor) -> torch.Tensor:
        sample = None
        if self.cfg.selection == "threshold":
            sample = self._samples.get(b.key)
            if sample is None:
                sample = self._samples[b.key] = sample_positions(x.numel(), self.cfg.sample_size, device=x.device)
        return select_indices(x, self.cfg.topk_ratio, method=self.cfg.selection, sample=sample)

    # -- checkpointing --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Collective over the data-parallel group: call it on every rank before engine.save_checkpoint.

        Only the rank that writes DeepSpeed's client_state (data-parallel rank 0 of each model-parallel slice) can
        save; so the error buffers of all DP ranks are gathered, and kept on the writing rank only.
        """
        sd: dict[str, Any] = dict(
            version=STATE_VERSION,
            step=self.step,
            decision=self.decision,
            probe=dict(self.probe),
            dp_world_size=self.dp_size,
            errors={},
            times={k: list(v) for k, v in self.schedule.times.items()},
        )
        if not self.cfg.checkpoint_errors:
            return sd
        keep = bool(getattr(self._engine, "save_non_zero_checkpoint", self.dp_rank == 0))
        for key in sorted(self.errors):  # the same keys, in the same order, on every DP rank
            e = self.errors[key]
            full = torch.empty(self.dp_size, e.numel(), dtype=e.dtype, device="cpu") if keep else None
            for lo in range(0, e.numel(), _GATHER_SLICE):
                piece = e[lo : lo + _GATHER_SLICE].contiguous()
                out = torch.empty(self.dp_size * piece.numel(), dtype=e.dtype, device=e.device)
                self._dist.all_gather_into_tensor(out, piece, group=self.dp_group)
                if keep:
                    full[:, lo : lo + piece.numel()] = out.view(self.dp_size, -1).cpu()
            if keep:
                sd["errors"][key] = full
        sd["errors_complete"] = keep
        return sd

    def load_state_dict(self, sd: dict[str, Any], strict: bool = True) -> None:
        """Restore step, the auto_fallback decision and this rank's error buffers (from the gathered state_dict()).
        With strict=False a different data-parallel size resets the error buffers (with a warning) instead of raising.
        """
        if sd.get("version") != STATE_VERSION:
            raise CompressionConfigError(
                f"{SECTION} state version={sd.get('version')!r}: expected {STATE_VERSION}; this "
                "checkpoint was written by another r1_ds version. Drop client_state['r1_compression'] "
                "to resume with empty buffers."
            )
        self.step = int(sd["step"])
        self.schedule.decision = sd.get("decision")
        self.schedule.probe = dict(sd.get("probe", {}))
        self.schedule.times = {k: list(v) for k, v in sd.get("times", {"dense": [], "compressed": []}).items()}
        self.errors.clear()
        self._pending_errors = {}
        # A run resumed with error_feedback off must not add the old residuals into its first gradients.
        errors = (sd.get("errors") or {}) if self.cfg.error_feedback else {}
        if errors and sd.get("dp_world_size") != self.dp_size:
            msg = (
                f"{SECTION}: checkpoint has error buffers for dp_world_size={sd.get('dp_world_size')}, this run has "
                f"{self.dp_size}; they cannot be split differently. Resume with the same data-parallel size, or "
                "call load_state_dict(sd, strict=False) to start with empty buffers."
            )
            if strict:
                raise CompressionConfigError(msg)
            from deepspeed.utils import logger

            logger.warning(msg + " Resetting them.")
            return
        self._pending_errors = {k: v[self.dp_rank].clone() for k, v in errors.items()}
        if self._buckets is not None:
            self._install_pending_errors()

    def _install_pending_errors(self) -> None:
        if not self._pending_errors:
            return
        sizes = {b.key: b.numel for b in self._buckets if not b.dense}
        for key, e in self._pending_errors.items():
            if sizes.get(key) != e.numel():
                raise CompressionConfigError(
                    f"{SECTION}: checkpointed error buffer {key!r} has {e.numel()} elements, the model's "
                    f"bucket has {sizes.get(key)}; the model or its parallel layout changed. Resume the "
                    "same model and layout, or drop client_state['r1_compression']."
                )
        device = self._grad_device()
        self.errors = {k: v.to(device) for k, v in self._pending_errors.items()}
        self._pending_errors = {}
