"""When the compressed reducer compresses: dense warm-up, then (with auto_fallback) a timed probe of each side and
a decision that holds for the rest of the run. Pure bookkeeping; the reducer times the steps and agrees the
medians over the world (r1_ds.parallel.comm_hook)."""

from __future__ import annotations

import statistics

__all__ = ["CompressionSchedule"]


class CompressionSchedule:
    """The phase of each optimizer step: "dense-warmup", "compressed-probe", "compressed" or "dense-fallback".

    Without auto_fallback: dense for `warmup_steps`, compressed afterwards. With it: the last `probe_steps` dense
    steps before `compression_start` and the first `probe_steps` compressed ones are timed, then `decide` keeps the
    faster side (`decision` "compressed" or "dense")."""

    def __init__(self, *, warmup_steps: int, auto_fallback: bool, probe_steps: int, min_speedup: float):
        self.warmup_steps = warmup_steps
        self.auto_fallback = auto_fallback
        self.probe_steps = probe_steps
        self.min_speedup = min_speedup
        self.decision: str | None = None  # None until auto_fallback decides; then "compressed" or "dense"
        self.probe: dict[str, float] = {}  # {"dense_s", "compressed_s", "speedup"} the decision was made on
        self.times: dict[str, list[float]] = {"dense": [], "compressed": []}  # seconds per timed reduction

    @property
    def compression_start(self) -> int:
        """First step that is compressed (with auto_fallback, after `probe_steps` timed dense steps)."""
        if self.auto_fallback:
            return max(self.warmup_steps, self.probe_steps)
        return self.warmup_steps

    def phase(self, step: int) -> str:
        if self.decision == "dense":
            return "dense-fallback"
        if self.decision == "compressed":
            return "compressed"
        if step < self.compression_start:
            return "dense-warmup"
        if not self.auto_fallback:
            return "compressed"
        return "compressed-probe"  # decided at step start + probe_steps

    def due(self, step: int) -> bool:
        """Time to decide (before reducing `step`): every probe step is timed and no decision was made yet."""
        return self.auto_fallback and self.decision is None and step >= self.compression_start + self.probe_steps

    def timed_side(self, step: int) -> str | None:
        """ "dense" or "compressed" when step `step`'s reduction time enters the probe, else None (call after
        `decide` was called for a `due` step)."""
        if not self.auto_fallback or self.decision is not None:
            return None
        start = self.compression_start
        if start - self.probe_steps <= step < start:
            return "dense"
        return "compressed" if self.phase(step) == "compressed-probe" else None

    def record(self, step: int, seconds: float) -> None:
        side = self.timed_side(step)
        if side is not None:
            self.times[side].append(seconds)

    def medians(self) -> tuple[float, float]:
        """(median dense seconds, median compressed seconds) of this rank's probe; 0.0 for a side never timed."""
        return tuple(statistics.median(self.times[s]) if self.times[s] else 0.0 for s in ("dense", "compressed"))

    def decide(self, dense_s: float, compressed_s: float) -> str:
        """Keep compression if dense_s / compressed_s >= min_speedup (the times agreed over the world); returns
        and holds the decision."""
        speedup = dense_s / compressed_s if compressed_s > 0 else float("inf")
        self.probe = {"dense_s": dense_s, "compressed_s": compressed_s, "speedup": speedup}
        self.decision = "compressed" if speedup >= self.min_speedup else "dense"
        return self.decision
