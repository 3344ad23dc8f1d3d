"""Compressed data-parallel gradient reduction, installed into a DeepSpeed engine.

    engine, *_ = deepspeed.initialize(model=model, config=ds_config, ...)
    reducer = install_compression(engine, ds_config)      # None when "r1_compression" is absent or disabled
    ...
    stats = reducer.last_stats()                           # bytes sent vs dense, ratio, seconds; log them
    client_state["r1_compression"] = reducer.state_dict()  # collective: call it on every rank
    reducer.load_state_dict(client_state["r1_compression"])  # after engine.load_checkpoint

DeepSpeed 0.19.8 has no communication-hook API. Every supported configuration reduces data-parallel gradients in
`DeepSpeedEngine.buffered_allreduce_fallback` (plain engine at ZeRO-0, PipelineEngine at ZeRO-0, and
BF16_Optimizer: bf16 at ZeRO-0 under a pipeline, or bf16 with fp32 gradient accumulation at ZeRO-1); it runs once
per optimizer step, at the gradient-accumulation boundary, before clipping and the optimizer. We replace that method
on the engine instance (`r1_ds.parallel.deepspeed_patches.replace_gradient_reduction`). The math lives in
`r1_ds.parallel.compression`; docs/compression.md explains both.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from r1_ds.parallel import compression as C
from r1_ds.parallel.deepspeed_patches import replace_gradient_reduction

SECTION = "r1_compression"
STATE_VERSION = 1
_GATHER_SLICE = 1 << 26  # elements per all-gather when saving error buffers (bounds the temporary memory)

__all__ = [
    "CompressionConfig",
    "CompressedReducer",
    "install_compression",
    "split_r1_sections",
    "SECTION",
]


class CompressionConfigError(ValueError):
    """The r1_compression section, or the engine it is installed into, breaks a rule; the message names the
    field or setting, the rule and the fix."""


# ---------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class CompressionConfig:
    """The "r1_compression" section of the DeepSpeed JSON (DeepSpeed 0.19.8 ignores unknown top-level keys)."""

    enabled: bool = False
    """Turn the hook on; when false or absent DeepSpeed's own all-reduce is left untouched."""
    topk_ratio: float = 0.05
    """Fraction of each bucket's elements sent per step, in (0, 1]."""
    bits: int = 8
    """Bits per sent value; only 8 (symmetric int8 with one fp32 scale per `quant_chunk` values)."""
    error_feedback: bool = True
    """Carry what was not sent (and the quantization error) into the next step's gradient."""
    warmup_steps: int = 100
    """Optimizer steps reduced densely before compression starts."""
    mode: str = "leader"
    """'leader': one rank per step (rotating) picks the positions, all ranks send values there, summed by an int8
    reduce-scatter + all-gather; bytes do not grow with the data-parallel size. 'allgather': every rank sends its own
    top-k (positions + int8 values) to every other rank; bytes grow linearly with the data-parallel size."""
    selection: str = "threshold"
    """'threshold': threshold estimated on a fixed sample, then one pass (fast, count within a few % of k);
    'topk': exact torch.topk over the whole bucket."""
    quant_chunk: int = 256
    """Values per fp32 scale (scale overhead is 4 / quant_chunk bytes per value)."""
    sample_size: int = 65536
    """Elements sampled per bucket to estimate the threshold (selection='threshold')."""
    dense_1d: bool = True
    """Reduce 1-D parameters (norms, biases; a tiny share of the bytes) with DeepSpeed's dense all-reduce."""
    auto_fallback: bool = True
    """Time dense and compressed reductions for `probe_steps` each after warmup and keep the faster (all ranks agree);
    on fast links (NVLink) the hook steps aside and says so."""
    probe_steps: int = 5
    """Steps timed per side when auto_fallback is on."""
    min_speedup: float = 1.0
    """Keep compression only if dense_time / compressed_time >= this (per reduction, slowest rank)."""
    checkpoint_errors: bool = True
    """Put the error buffers of all data-parallel ranks into state_dict() (4 bytes per parameter per DP rank); when
    false they are reset on resume, as 1-bit Adam did."""

    @classmethod
    def from_dict(cls, section: dict) -> "CompressionConfig":
        """Validate a config section; errors name the field, the value, the rule and the fix."""
        if not isinstance(section, dict):
            raise CompressionConfigError(f"{SECTION}={section!r}: must be a JSON object; write e.g. "
                                         f'"{SECTION}": {{"enabled": true, "topk_ratio": 0.05}}')
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise CompressionConfigError(f"{SECTION}: unknown keys {unknown}; valid keys are {sorted(known)}")
        cfg = cls(**section)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        def bad(name: str, rule: str, fix: str) -> CompressionConfigError:
            return CompressionConfigError(f"{SECTION}.{name}={getattr(self, name)!r}: {rule}; {fix}")

        for name in ("enabled", "error_feedback", "dense_1d", "auto_fallback", "checkpoint_errors"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false", f"write {name}: true or {name}: false")
        for name in ("bits", "warmup_steps", "quant_chunk", "sample_size", "probe_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad(name, "must be an integer", f"write a whole number for {name}")
        for name in ("topk_ratio", "min_speedup"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "must be a finite number", f"write a number for {name}")
        if not 0.0 < self.topk_ratio <= 1.0:
            raise bad("topk_ratio", "must be in (0, 1]", "use e.g. 0.05 to send 5% of the elements")
        if self.bits != 8:
            raise bad("bits", "only 8-bit quantization is implemented", "set bits to 8")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", "must be >= 0", "use 0 to compress from the first step")
        if self.mode not in ("leader", "allgather"):
            raise bad("mode", "must be 'leader' or 'allgather'", "use 'leader' (bytes independent of DP size)")
        if self.selection not in ("threshold", "topk"):
            raise bad("selection", "must be 'threshold' or 'topk'", "use 'threshold' (faster) or 'topk' (exact k)")
        if not 1 <= self.quant_chunk <= 65536:
            raise bad("quant_chunk", "must be in [1, 65536]", "use e.g. 256 (1.6% scale overhead)")
        if self.sample_size < 1024:
            raise bad("sample_size", "must be >= 1024 for a stable threshold", "use e.g. 65536")
        if self.probe_steps < 1:
            raise bad("probe_steps", "must be >= 1", "use e.g. 5, or set auto_fallback to false")
        if self.min_speedup < 0:
            raise bad("min_speedup", "must be >= 0", "use 1.0 to keep compression only when it is faster")


def split_r1_sections(ds_config: dict) -> tuple[dict, dict | None]:
    """(DeepSpeed config without our section, our section or None). Not needed by DeepSpeed 0.19.8, which ignores
    unknown top-level keys; use it to hand a strict consumer (a schema check, another launcher) pure DeepSpeed JSON."""
    rest = {k: v for k, v in ds_config.items() if k != SECTION}
    return rest, ds_config.get(SECTION)


# ---------------------------------------------------------------------------------------------------------------
# installation


def _check_engine(engine) -> None:
    """Refuse, with the reason and the fix, every configuration whose reduction does not go through our method."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    if not callable(getattr(engine, "buffered_allreduce_fallback", None)):
        raise RuntimeError(f"{SECTION}: this DeepSpeed engine has no buffered_allreduce_fallback; the hook is written "
                           "against deepspeed==0.19.8. Install that version or disable the section.")
    stage = engine.zero_optimization_stage()
    if stage >= 2:
        raise CompressionConfigError(
            f"{SECTION}: zero_optimization.stage={stage} is not supported: ZeRO-2/3 partition gradients "
            "and reduce them in per-parameter hooks on every micro-step, out of this hook's reach. "
            "Set zero_optimization.stage to 0 or 1, or set r1_compression.enabled to false.")
    if stage == 1 and not isinstance(engine.optimizer, BF16_Optimizer):
        raise CompressionConfigError(
            f"{SECTION}: ZeRO-1 with {type(engine.optimizer).__name__} is not supported: it reduce-scatters gradient "
            "slices to their owner ranks (reduce_gradients/average_tensor) in topology-dependent buckets, where top-k "
            "with per-rank error feedback has no stable place. Use bf16 with "
            '"data_types": {"grad_accum_dtype": "fp32"} (BF16_Optimizer, which also partitions the optimizer state '
            "like ZeRO-1), or zero_optimization.stage 0.")
    if engine.fp16_enabled():
        raise CompressionConfigError(
            f"{SECTION}: fp16 is not supported: loss-scaled gradients put inf/NaN into the error buffers "
            "on overflow steps. Use bf16 (\"bf16\": {\"enabled\": true}).")
    if getattr(engine, "has_moe_layers", False):
        raise CompressionConfigError(
            f"{SECTION}: models with MoE layers are not supported (expert gradients reduce over expert "
            "groups). Disable r1_compression for MoE models.")
    if getattr(engine, "sequence_parallel_size", 1) != 1:
        raise CompressionConfigError(
            f"{SECTION}: sequence_parallel_size={engine.sequence_parallel_size} is not supported; "
            "use sequence_parallel_size 1 or disable r1_compression.")


def install_compression(engine, ds_config: dict | str | None) -> "CompressedReducer | None":
    """Patch `engine` (DeepSpeedEngine or PipelineEngine, after deepspeed.initialize) to reduce data-parallel gradients
    compressed, per the "r1_compression" section of `ds_config` (the dict or JSON path given to DeepSpeed); None when
    the section is absent or disabled."""
    if isinstance(ds_config, str):
        with open(ds_config) as f:
            ds_config = json.load(f)
    section = (ds_config or {}).get(SECTION)
    if section is None:
        return None
    cfg = CompressionConfig.from_dict(section)
    if not cfg.enabled:
        return None
    _check_engine(engine)
    if getattr(engine, "_r1_compression", None) is not None:
        raise RuntimeError(f"{SECTION}: already installed on this engine; call install_compression once per engine")
    reducer = CompressedReducer(engine, cfg, engine.buffered_allreduce_fallback)  # the original: warm-up, dense fallback
    # reducer.reduce is looked up per call, so a wrapper set on the reducer later applies too
    replace_gradient_reduction(engine, lambda elements_per_buffer: reducer.reduce(elements_per_buffer))
    engine._r1_compression = reducer
    _log(f"{SECTION}: installed (mode={cfg.mode}, topk_ratio={cfg.topk_ratio}, bits={cfg.bits}, "
         f"error_feedback={cfg.error_feedback}, warmup_steps={cfg.warmup_steps}, auto_fallback={cfg.auto_fallback}, "
         f"dp_size={reducer.dp_size}, optimizer={type(engine.optimizer).__name__})")
    return reducer


def _log(msg: str) -> None:
    from deepspeed.utils import log_dist

    log_dist(msg, ranks=[0])


# ---------------------------------------------------------------------------------------------------------------
# the reducer


@dataclass
class _Bucket:
    """Parameters compressed together. Every replica of a parameter (DP peers, TP-replicated copies, pipeline-tied
    copies) must see bit-identical compressor input, so replicated, TP-sharded and each tied weight get their own."""

    key: str  # "float32/rep/-", "float32/tp/-", "float32/rep/tied:embed.weight", or "dense"
    params: list  # in model order
    numel: int
    dense: bool  # reduced by DeepSpeed's own all-reduce (1-D params when dense_1d)


def _pieces(flat: torch.Tensor, grads: list[torch.Tensor]):
    """(grad, its slice of the flat bucket buffer) pairs; the slices are views in the bucket's order."""
    return zip(grads, flat.split([g.numel() for g in grads]))


def _ring_bytes(op: str, payload: int, world: int) -> float:
    """Bytes one rank transmits for a collective under ring algorithms (NCCL's bus-bandwidth model).

    all_reduce 2(W-1)/W * payload; all_gather (W-1) * payload (payload = this rank's input);
    all_to_all and broadcast (W-1)/W * payload (payload = the whole buffer).
    """
    if world <= 1:
        return 0.0
    if op == "all_reduce":
        return 2 * (world - 1) / world * payload
    if op == "all_gather":
        return (world - 1) * payload
    if op in ("all_to_all", "broadcast"):
        return (world - 1) / world * payload
    raise ValueError(op)


class CompressedReducer:
    """Replaces `engine.buffered_allreduce_fallback`; holds the error buffers and the per-step statistics."""

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
        self.decision: str | None = None  # None until auto_fallback decides; then "compressed" or "dense"
        self.probe: dict[str, float] = {}  # median seconds per reduction: {"dense_s": ..., "compressed_s": ...}
        self.errors: dict[str, torch.Tensor] = {}  # bucket key -> (numel,) fp32 error buffer on the grad device
        self._pending_errors: dict[str, torch.Tensor] = {}  # loaded before the buckets exist
        self._buckets: list[_Bucket] | None = None
        self._samples: dict[str, torch.Tensor] = {}
        self._times: dict[str, list[float]] = {"dense": [], "compressed": []}
        self._stats: dict[str, Any] = {}

    # -- schedule -------------------------------------------------------------------------------------------------

    @property
    def compression_start(self) -> int:
        """First step that is compressed (with auto_fallback, after `probe_steps` timed dense steps)."""
        if self.cfg.auto_fallback:
            return max(self.cfg.warmup_steps, self.cfg.probe_steps)
        return self.cfg.warmup_steps

    def _phase(self, step: int) -> str:
        if self.decision == "dense":
            return "dense-fallback"
        if self.decision == "compressed":
            return "compressed"
        start = self.compression_start
        if step < start:
            return "dense-warmup"
        if not self.cfg.auto_fallback:
            return "compressed"
        return "compressed-probe"  # decided at step start + probe_steps, see reduce()

    def _decide(self) -> None:
        """Compare the timed medians (slowest rank of the world) and keep the faster reduction; a collective."""
        dense = statistics.median(self._times["dense"]) if self._times["dense"] else 0.0
        comp = statistics.median(self._times["compressed"]) if self._times["compressed"] else 0.0
        device = self._grad_device()
        t = torch.tensor([dense, comp], dtype=torch.float64, device=device)
        # the whole world agrees, so that pipeline stages and TP peers (tied / replicated weights) choose alike
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX)
        dense, comp = t.tolist()
        speedup = dense / comp if comp > 0 else float("inf")
        self.probe = {"dense_s": dense, "compressed_s": comp, "speedup": speedup}
        if speedup >= self.cfg.min_speedup:
            self.decision = "compressed"
            _log(f"{SECTION}: keeping compression: reduction {dense * 1e3:.1f} ms dense vs {comp * 1e3:.1f} ms "
                 f"compressed ({speedup:.2f}x >= min_speedup {self.cfg.min_speedup})")
        else:
            self.decision = "dense"
            _log(f"{SECTION}: stepping aside, dense all-reduce from step {self.step}: reduction {dense * 1e3:.1f} ms "
                 f"dense vs {comp * 1e3:.1f} ms compressed ({speedup:.2f}x < min_speedup {self.cfg.min_speedup}); "
                 "the link is fast enough that compressing costs more than it saves")

    # -- entry point ----------------------------------------------------------------------------------------------

    def reduce(self, elements_per_buffer: int) -> None:
        """One data-parallel gradient reduction (called by the patched engine method at each GAS boundary)."""
        cfg = self.cfg
        if (cfg.auto_fallback and self.decision is None
                and self.step >= self.compression_start + cfg.probe_steps):
            self._decide()
        phase = self._phase(self.step)
        pairs = self._param_grads()
        if self._buckets is None:
            self._buckets = self._plan(pairs)
            self._install_pending_errors()
        self._sync()
        t0 = time.perf_counter()
        if phase.startswith("compressed"):
            stats = self._reduce_compressed(pairs, elements_per_buffer)
        else:
            stats = self._reduce_dense(pairs, elements_per_buffer)
        self._sync()
        elapsed = time.perf_counter() - t0
        start = self.compression_start
        if cfg.auto_fallback and self.decision is None:
            if start - cfg.probe_steps <= self.step < start:
                self._times["dense"].append(elapsed)
            elif phase == "compressed-probe":
                self._times["compressed"].append(elapsed)
        stats.update(step=self.step, mode=phase, reduce_s=elapsed, compress_s=max(0.0, elapsed - stats["comm_s"]))
        stats["ratio"] = stats["dense_bytes"] / stats["bytes_sent"] if stats["bytes_sent"] else 1.0
        stats["ratio_vs_fp32"] = stats["dense_fp32_bytes"] / stats["bytes_sent"] if stats["bytes_sent"] else 1.0
        self._stats = stats
        self.step += 1

    def last_stats(self) -> dict[str, Any]:
        """The last reduction: step, mode, bytes_sent (this rank, ring model), payload_bytes (handed to collectives),
        dense_bytes (what DeepSpeed's all-reduce would send, in its communication dtype), dense_fp32_bytes, ratio
        (dense_bytes / bytes_sent), ratio_vs_fp32, elements, selected, reduce_s, comm_s, compress_s (reduce_s - comm_s:
        selection, quantization, error feedback, copies)."""
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
                    "use dense embeddings or disable r1_compression.")
            pairs.append((p, p.grad.data))
        return pairs

    def _plan(self, pairs) -> list[_Bucket]:
        from deepspeed.runtime.utils import is_model_parallel_parameter

        tied = {}
        for name, module in getattr(self._engine.module, "tied_modules", {}).items():
            for pname, p in module.named_parameters():
                tied[id(p)] = f"tied:{name}.{pname}"
        buckets: dict[str, _Bucket] = {}
        for p, g in pairs:
            if self.cfg.dense_1d and p.dim() <= 1:
                key, dense = "dense", True
            else:
                tp = "tp" if is_model_parallel_parameter(p) else "rep"
                key, dense = f"{str(g.dtype).replace('torch.', '')}/{tp}/{tied.get(id(p), '-')}", False
            b = buckets.setdefault(key, _Bucket(key, [], 0, dense))  # dict keeps first-appearance order
            b.params.append(p)
            b.numel += p.numel()
        return list(buckets.values())

    def _grad_device(self) -> torch.device:
        pairs = self._param_grads()
        return pairs[0][1].device if pairs else torch.device("cpu")

    # -- dense path -----------------------------------------------------------------------------------------------

    def _comm_elem_size(self) -> int:
        """Bytes per element of DeepSpeed's dense all-reduce (its communication_data_type)."""
        return self._engine.communication_data_type.itemsize

    def _dense_bytes(self, numel: int) -> tuple[float, float]:
        """(wire bytes of DeepSpeed's all-reduce in its communication dtype, the same in fp32) for `numel`."""
        return (_ring_bytes("all_reduce", numel * self._comm_elem_size(), self.dp_size),
                _ring_bytes("all_reduce", numel * 4, self.dp_size))

    def _reduce_dense(self, pairs, elements_per_buffer: int) -> dict[str, Any]:
        if self.errors:  # leaving compression: hand the carried error to this dense step, so nothing is lost
            grads = {id(p): g for p, g in pairs}
            for b in self._buckets:
                err = self.errors.pop(b.key, None)
                if err is None:
                    continue
                for g, e in _pieces(err, [grads[id(p)] for p in b.params]):
                    g.add_(e.view_as(g).to(g.dtype))
            self.errors.clear()
        self._sync()
        t0 = time.perf_counter()
        self._stock(grads=None, elements_per_buffer=elements_per_buffer)
        self._sync()
        comm_s = time.perf_counter() - t0
        numel = sum(g.numel() for _, g in pairs)
        dense, dense32 = self._dense_bytes(numel)
        return dict(bytes_sent=dense, payload_bytes=numel * self._comm_elem_size(), dense_bytes=dense,
                    dense_fp32_bytes=dense32, elements=numel, selected=numel, comm_s=comm_s)

    # -- compressed path ------------------------------------------------------------------------------------------

    def _comm(self, acc: dict, op: str, payload: int, fn, *args, **kwargs) -> None:
        """Run one collective, timed (synchronized on both sides), and count its bytes."""
        self._sync()
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        self._sync()
        acc["comm_s"] += time.perf_counter() - t0
        acc["payload_bytes"] += payload
        acc["bytes_sent"] += _ring_bytes(op, payload, self.dp_size)

    def _reduce_compressed(self, pairs, elements_per_buffer: int) -> dict[str, Any]:
        acc = dict(comm_s=0.0, payload_bytes=0, bytes_sent=0.0, selected=0)
        grads = {id(p): g for p, g in pairs}
        dense_grads = []
        for b in self._buckets:
            gs = [grads[id(p)] for p in b.params]
            if b.dense:
                dense_grads.extend(gs)
                continue
            x = self._bucket_input(b.key, gs)
            if self.cfg.mode == "leader":
                out, err = self._leader_reduce(b, x, acc)
            else:
                out, err = self._allgather_reduce(b, x, acc)
            if self.cfg.error_feedback:
                self.errors[b.key] = err
            for g, o in _pieces(out, gs):
                g.copy_(o.view_as(g))
        if dense_grads:
            numel = sum(g.numel() for g in dense_grads)
            self._comm(acc, "all_reduce", numel * self._comm_elem_size(), self._engine._reduce_non_expert_gradients,
                       dense_grads, elements_per_buffer)
            acc["selected"] += numel
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
        for g, c in _pieces(carried, gs):
            c += g.reshape(-1)
        return carried

    def _select(self, b: _Bucket, x: torch.Tensor) -> torch.Tensor:
        sample = None
        if self.cfg.selection == "threshold":
            sample = self._samples.get(b.key)
            if sample is None:
                sample = self._samples[b.key] = C.sample_positions(x.numel(), self.cfg.sample_size, device=x.device)
        return C.select_indices(x, self.cfg.topk_ratio, method=self.cfg.selection, sample=sample)

    def _leader_reduce(self, b: _Bucket, x: torch.Tensor, acc: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Leader positions + int8 reduce-scatter (all_to_all) + int8 all-gather. Returns (dense average, new error).

        Wire per rank: positions by broadcast ((W-1)/W * n/8 bytes as a bitmap), then 2 (W-1)/W * c bytes of int8 plus
        scales, so the bytes do not grow with W. The owner of each slice of the sum re-quantizes it; its rounding
        error goes into the owner's error buffer, times W (it is averaged back by 1/W at the next step).
        """
        dist, group, world, rank = self._dist, self.dp_group, self.dp_size, self.dp_rank
        n, chunk = x.numel(), self.cfg.quant_chunk
        leader = self.step % world  # rotates, so every rank's largest residuals get their turn
        src = dist.get_global_rank(group, leader)
        fmt = C.index_format(self.cfg.topk_ratio)
        idx = self._select(b, x) if rank == leader else None
        if fmt == "bitmap":
            buf = C.pack_bitmap(idx, n) if rank == leader else torch.empty((n + 7) // 8, dtype=torch.uint8,
                                                                          device=x.device)
            self._comm(acc, "broadcast", buf.numel(), dist.broadcast, buf, src, group=group)
            if rank != leader:
                idx = C.unpack_bitmap(buf, n)
        else:
            count = torch.tensor([idx.numel() if rank == leader else 0], dtype=torch.int64, device=x.device)
            self._comm(acc, "broadcast", 8, dist.broadcast, count, src, group=group)
            buf = idx.to(torch.int32) if rank == leader else torch.empty(int(count.item()), dtype=torch.int32,
                                                                          device=x.device)
            self._comm(acc, "broadcast", 4 * buf.numel(), dist.broadcast, buf, src, group=group)
            idx = buf.long()
        c = idx.numel()
        acc["selected"] += c
        p = C.padded_length(c, world * chunk)  # every owner gets `part` values, a whole number of chunks
        part = p // world
        q, scales = C.quantize_int8(F.pad(x[idx], (0, p - c)), chunk)  # (p,), (p // chunk,)
        # x is not needed after this: it becomes the error buffer
        err = C.residual(x, idx, C.dequantize_int8(q, scales, chunk)[:c], inplace=True) if self.cfg.error_feedback \
            else None
        recv_q, recv_s = torch.empty_like(q), torch.empty_like(scales)
        self._comm(acc, "all_to_all", q.numel(), dist.all_to_all_single, recv_q, q, group=group)
        self._comm(acc, "all_to_all", 4 * scales.numel(), dist.all_to_all_single, recv_s, scales, group=group)
        mine = C.sum_dequantized(recv_q.view(world, part), recv_s.view(world, part // chunk), chunk)  # (part,)
        if self._average:
            mine /= world
        q2, s2 = C.quantize_int8(mine, chunk)
        all_q = torch.empty(p, dtype=torch.int8, device=x.device)
        all_s = torch.empty(p // chunk, dtype=torch.float32, device=x.device)
        self._comm(acc, "all_gather", q2.numel(), dist.all_gather_into_tensor, all_q, q2, group=group)
        self._comm(acc, "all_gather", 4 * s2.numel(), dist.all_gather_into_tensor, all_s, s2, group=group)
        if err is not None:
            lo, hi = rank * part, min(c, (rank + 1) * part)
            if hi > lo:
                lost = mine[: hi - lo] - C.dequantize_int8(q2, s2, chunk)[: hi - lo]
                err[idx[lo:hi]] += lost * (world if self._average else 1)
        out = torch.zeros(n, dtype=torch.float32, device=x.device)
        out[idx] = C.dequantize_int8(all_q, all_s, chunk)[:c]
        return out, err

    def _allgather_reduce(self, b: _Bucket, x: torch.Tensor, acc: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every rank's own top-k: all-gather (positions, int8 values, scales), sum in rank order. Wire per rank grows
        as (W-1) * message, like DeepSpeed's sparse_allreduce."""
        dist, group, world = self._dist, self.dp_group, self.dp_size
        n, chunk = x.numel(), self.cfg.quant_chunk
        fmt = C.index_format(self.cfg.topk_ratio)
        idx = self._select(b, x)
        c = idx.numel()
        acc["selected"] += c
        counts = torch.empty(world, dtype=torch.int64, device=x.device)
        self._comm(acc, "all_gather", 8, dist.all_gather_into_tensor, counts,
                   torch.tensor([c], dtype=torch.int64, device=x.device), group=group)
        counts_l = counts.tolist()
        p = C.padded_length(max(counts_l), chunk)
        q, scales = C.quantize_int8(F.pad(x[idx], (0, p - c)), chunk)
        err = C.residual(x, idx, C.dequantize_int8(q, scales, chunk)[:c], inplace=True) if self.cfg.error_feedback \
            else None
        if fmt == "bitmap":
            ibuf = C.pack_bitmap(idx, n)
        else:
            ibuf = F.pad(idx.to(torch.int32), (0, max(counts_l) - c))
        all_i = torch.empty(world * ibuf.numel(), dtype=ibuf.dtype, device=x.device)
        all_q = torch.empty(world * p, dtype=torch.int8, device=x.device)
        all_s = torch.empty(world * scales.numel(), dtype=torch.float32, device=x.device)
        self._comm(acc, "all_gather", ibuf.numel() * ibuf.element_size(), dist.all_gather_into_tensor, all_i, ibuf,
                   group=group)
        self._comm(acc, "all_gather", q.numel(), dist.all_gather_into_tensor, all_q, q, group=group)
        self._comm(acc, "all_gather", 4 * scales.numel(), dist.all_gather_into_tensor, all_s, scales, group=group)
        vals = C.dequantize_int8(all_q, all_s, chunk).view(world, p)
        all_i = all_i.view(world, -1)
        out = torch.zeros(n, dtype=torch.float32, device=x.device)
        for r in range(world):  # rank order, same on every rank -> bit-identical sums
            ir = C.unpack_bitmap(all_i[r], n) if fmt == "bitmap" else all_i[r, : counts_l[r]].long()
            out.index_add_(0, ir, vals[r, : counts_l[r]])
        if self._average:
            out /= world
        return out, err

    # -- checkpointing --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Collective over the data-parallel group: call it on every rank before engine.save_checkpoint.

        Only the rank that writes DeepSpeed's client_state (data-parallel rank 0 of each model-parallel slice) can
        save; so the error buffers of all DP ranks are gathered, and kept on the writing rank only.
        """
        sd: dict[str, Any] = dict(version=STATE_VERSION, step=self.step, decision=self.decision, probe=dict(self.probe),
                                  dp_world_size=self.dp_size, errors={}, times={k: list(v) for k, v in
                                                                               self._times.items()})
        if not self.cfg.checkpoint_errors:
            return sd
        keep = bool(getattr(self._engine, "save_non_zero_checkpoint", self.dp_rank == 0))
        for key in sorted(self.errors):  # the same keys, in the same order, on every DP rank
            e = self.errors[key]
            full = torch.empty(self.dp_size, e.numel(), dtype=e.dtype, device="cpu") if keep else None
            for lo in range(0, e.numel(), _GATHER_SLICE):
                piece = e[lo:lo + _GATHER_SLICE].contiguous()
                out = torch.empty(self.dp_size * piece.numel(), dtype=e.dtype, device=e.device)
                self._dist.all_gather_into_tensor(out, piece, group=self.dp_group)
                if keep:
                    full[:, lo:lo + piece.numel()] = out.view(self.dp_size, -1).cpu()
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
                "to resume with empty buffers.")
        self.step = int(sd["step"])
        self.decision = sd.get("decision")
        self.probe = dict(sd.get("probe", {}))
        self._times = {k: list(v) for k, v in sd.get("times", {"dense": [], "compressed": []}).items()}
        self.errors.clear()
        self._pending_errors = {}
        # A run resumed with error_feedback off must not add the old residuals into its first gradients.
        errors = (sd.get("errors") or {}) if self.cfg.error_feedback else {}
        if errors and sd.get("dp_world_size") != self.dp_size:
            msg = (f"{SECTION}: checkpoint has error buffers for dp_world_size={sd.get('dp_world_size')}, this run has "
                   f"{self.dp_size}; they cannot be split differently. Resume with the same data-parallel size, or "
                   "call load_state_dict(sd, strict=False) to start with empty buffers.")
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
                    "same model and layout, or drop client_state['r1_compression'].")
        device = self._grad_device()
        self.errors = {k: v.to(device) for k, v in self._pending_errors.items()}
        self._pending_errors = {}
