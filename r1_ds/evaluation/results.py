"""Results files and the printed table shared by every evaluation task."""

from __future__ import annotations

import os

from data_prep.atomic import atomic_write_json


def write_results(path: str, results: dict) -> str:
    """Write `results` as indented JSON, atomically; returns the path."""
    atomic_write_json(path, results)
    return path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def format_table(rows: list[tuple[str, str, object]], title: str = "") -> str:
    """A plain text table of (task, metric, value) rows."""
    cells = [("task", "metric", "value")] + [(t, m, _fmt(v)) for t, m, v in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    line = "  ".join("-" * w for w in widths)
    body = ["  ".join(c[i].ljust(widths[i]) for i in range(3)) for c in cells]
    return "\n".join(([title] if title else []) + [body[0], line] + body[1:])


def metric_rows(task: str, metrics: dict) -> list[tuple[str, str, object]]:
    """(task, metric, value) for every number of a metrics dict; a nested dict's numbers as task/key."""
    rows = []
    for k, v in metrics.items():
        if isinstance(v, dict):
            rows += metric_rows(f"{task}/{k}", v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append((task, k, v))
    return rows


def default_results_path(model_dir: str, task: str) -> str:
    return os.path.join(model_dir, "eval", f"{task}.json")
