"""Rank-0 logging, the metrics file (metrics.jsonl), TensorBoard, DeepSpeed's monitor and the progress bar.

DeepSpeed's monitor (the "tensorboard", "wandb", "csv_monitor" and "comet" sections of the DeepSpeed JSON)
receives R1's own metrics too (tokens/s, MFU, grad norm, compression stats, ...) as `Train/R1/<name>`,
on DeepSpeed's own x axis (samples seen), and its writers are closed (W&B runs finished) with the metrics.

Library code logs through `log0` only; every other rank stays quiet.
"""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger("r1_ds")


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def log0(msg: str, *args, level: int = logging.INFO) -> None:
    """Log on global rank 0 only."""
    if global_rank() == 0:
        log.log(level, msg, *args)


class MetricsWriter:
    """metrics.jsonl (one JSON object per logged step), TensorBoard scalars and a tqdm bar, on rank 0."""

    def __init__(
        self,
        out_dir: str,
        *,
        total_steps: int,
        start_step: int,
        tensorboard: bool = True,
        progress: bool = True,
        enabled: bool = True,
        monitor=None,
    ):
        self.enabled = enabled
        self.monitor = monitor if monitor is not None and getattr(monitor, "enabled", False) else None
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self._tb = None
        self._bar = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        partial = False  # a killed run may have left a partial last line: end it, keep the records apart
        if os.path.isfile(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                partial = f.read(1) != b"\n"
        self._file = open(self.path, "a")
        if partial:
            self._file.write("\n")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except ImportError:  # tensorboard not installed: the JSONL file still has everything
                log.warning("tensorboard is not installed; writing metrics.jsonl only")
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, record: dict, monitor_step: int | None = None) -> None:
        """Log one step's record; `monitor_step` is the x value of DeepSpeed's monitor (its global samples)."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, step)
        if self.monitor is not None:
            x = record["step"] if monitor_step is None else monitor_step
            self.monitor.write_events(
                [
                    (f"Train/R1/{key}", value, x)
                    for key, value in record.items()
                    if key not in ("step", "time") and isinstance(value, (int, float))
                ]
            )

    def progress(self, steps: int, postfix: dict) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            self._bar.set_postfix({k: v for k, v in postfix.items() if v is not None}, refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
        close_monitor(self.monitor)
        self.monitor = None


def close_monitor(monitor) -> None:
    """End DeepSpeed's monitor writers before the process exits (exit_process skips the interpreter's teardown,
    which would otherwise be the only thing to flush them): TensorBoard files closed, the W&B run finished,
    the Comet experiment ended. The CSV monitor writes each event with its own open/close."""
    if monitor is None:
        return
    tb = getattr(monitor, "tb_monitor", None)
    if tb is not None and getattr(tb, "summary_writer", None) is not None:
        tb.summary_writer.close()
    if getattr(monitor, "wandb_monitor", None) is not None:
        import wandb

        wandb.finish()
    comet = getattr(monitor, "comet_monitor", None)
    if comet is not None and getattr(comet, "experiment", None) is not None:
        comet.experiment.end()


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl; when a resumed run rewrote steps, the last record of a step wins. A line
    that is not a complete record (the partial last line of a killed run) is skipped with a warning."""
    by_step: dict[int, dict] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
            except (ValueError, KeyError, TypeError):
                log.warning(
                    "%s line %d is not a complete metrics record (a killed run's partial line?); skipped", path, number
                )
    return [by_step[s] for s in sorted(by_step)]
