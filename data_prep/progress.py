"""Progress lines while prep runs: documents, documents per second and an ETA from the share of input bytes read."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """``update(docs, bytes_done)`` logs at most every ``every_s`` seconds through ``emit`` (a logger method).
    Without ``total_bytes`` (a stream of unknown size) the line has no ETA."""

    def __init__(self, label: str, total_bytes: int | None, emit: Callable[[str], None], *, every_s: float = 10.0):
        self.label = label
        self.total_bytes = None if total_bytes is None else max(total_bytes, 1)
        self.emit = emit
        self.every_s = every_s
        self.start = self._last = time.perf_counter()
        self.docs = 0
        self.bytes_done = 0

    def update(self, docs: int, bytes_done: int = 0) -> None:
        self.docs, self.bytes_done = docs, bytes_done
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self.emit(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
        rate = f"{self.label}: {self.docs} docs, {self.docs / elapsed:.0f} docs/s"
        if self.total_bytes is None:
            return rate
        share = min(self.bytes_done / self.total_bytes, 1.0)
        eta = elapsed * (1 - share) / share if share > 0 else float("nan")
        return f"{rate}, {100 * share:.1f}% of {self.total_bytes / 1e6:.1f} MB read, ETA {format_eta(eta)}"


def format_eta(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing read yet
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
