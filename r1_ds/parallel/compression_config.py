"""The "r1_compression" section of the DeepSpeed JSON, parsed once into a typed, validated `CompressionConfig`.

    ds, compression = compression_config(ds_json)   # (DeepSpeed dict without our section, CompressionConfig | None)
    reducer = install_compression(engine, compression)

DeepSpeed 0.19.8 ignores unknown top-level keys, so the section may stay in the JSON; the start-up path parses it
here before `deepspeed.initialize` (a bad field fails before any engine is built) and hands the object on; the
hook never reads the raw dict again. docs/compression.md lists the fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

SECTION = "r1_compression"

__all__ = ["SECTION", "CompressionConfig", "CompressionConfigError", "compression_config", "split_r1_sections"]


class CompressionConfigError(ValueError):
    """The r1_compression section, or the engine it is installed into, breaks a rule; the message names the
    field or setting, the rule and the fix."""


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
    timing: bool = False
    """Synchronise the device around every collective and around each reduction, so that last_stats() reports
    comm_s, compress_s and reduce_s as device time (the benchmarks turn it on). Off, the hot path never waits for
    the device only to time it: comm_s and compress_s are None and reduce_s is host time. The auto_fallback probe
    times its few reductions either way."""

    @classmethod
    def from_dict(cls, section: dict) -> CompressionConfig:
        """Validate a config section; errors name the field, the value, the rule and the fix."""
        if not isinstance(section, dict):
            raise CompressionConfigError(
                f"{SECTION}={section!r}: must be a JSON object; write e.g. "
                f'"{SECTION}": {{"enabled": true, "topk_ratio": 0.05}}'
            )
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise CompressionConfigError(f"{SECTION}: unknown keys {unknown}; valid keys are {sorted(known)}")
        cfg = cls(**section)
        cfg._validate()
        return cfg

    def to_dict(self) -> dict:
        """The section as JSON (every field, defaults included): what the run used."""
        return asdict(self)

    def _validate(self) -> None:
        def bad(name: str, rule: str, fix: str) -> CompressionConfigError:
            return CompressionConfigError(f"{SECTION}.{name}={getattr(self, name)!r}: {rule}; {fix}")

        for name in ("enabled", "error_feedback", "dense_1d", "auto_fallback", "checkpoint_errors", "timing"):
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


def compression_config(ds_config: dict | str | None) -> tuple[dict, CompressionConfig | None]:
    """(DeepSpeed config without our section, the section parsed and validated, or None when absent) from the
    DeepSpeed dict or the path of its JSON file."""
    if isinstance(ds_config, str):
        with open(ds_config) as f:
            ds_config = json.load(f)
    rest, section = split_r1_sections(ds_config or {})
    return rest, None if section is None else CompressionConfig.from_dict(section)
