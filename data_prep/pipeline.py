"""The pieces every run of a filter list shares, and ``Pipeline``: the engine on documents held in memory.

There is one runner, the engine (data_prep/engine/): ``r1-ds prep`` runs it with one worker by default and with N
on datatrove's executors. ``apply_filter`` is the one place a filter meets its documents; ``stage_io`` and
``add_stage_counts`` read and merge per-stage counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from data_prep.document import Document
from data_prep.filters.base import BaseFilter

log = logging.getLogger(__name__)


def _empty_stage() -> dict[str, Any]:
    return {"in": 0, "kept": 0, "dropped": 0, "reasons": {}}


def committed_state(path: Path) -> dict[str, Any] | None:
    """A task's commit record, or None: missing, or damaged (with a warning; the task is redone). Records are
    written atomically, so damage comes from outside; redoing the task rewrites its outputs whole."""
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        state, why = None, f"{type(err).__name__}: {err}"
    else:
        why = "fields num_docs, stages missing"
    if isinstance(state, dict) and {"num_docs", "stages"} <= state.keys():
        return state
    log.warning("%s: damaged commit record (%s); redoing the part", path, why)
    return None


class Pipeline:
    """The engine (one worker, this process) on documents given in memory: each ``part_size`` documents are one
    task, committed as ``kept/``, ``rejects/`` and ``state/<modality>/part_NNNNN.json`` (the unit of resume)."""

    def __init__(self, modality: str, filters: Sequence[BaseFilter], *, out_dir: Path, part_size: int = 1000):
        names = [f.name for f in filters]
        if len(set(names)) != len(names):
            raise ValueError(f"{modality} pipeline: filter names must be unique, got {names}")
        self.modality, self.filters, self.out_dir, self.part_size = modality, list(filters), Path(out_dir), part_size

    def run(self, docs: Iterable[Document]) -> dict[str, dict[str, Any]]:
        """Process every document; returns per-stage counts summed over all parts (resumed ones included)."""
        from data_prep.engine.run import run_engine
        from data_prep.scale_config import ScaleSettings

        return run_engine(
            modality=self.modality,
            specs=[],
            filters=self.filters,
            out=self.out_dir,
            cfg=ScaleSettings(executor="local", workers=1),
            text_field="text",
            id_field=None,
            part_size=self.part_size,
            documents=list(docs),
        )


def apply_filter(f: BaseFilter, docs: list[Document], *, modality: str, errors: int = 0) -> tuple[list[Any], int]:
    """(results, errors so far): one filter over a batch; a per-document filter that raises drops that document
    as ``filter_error_<Exception>`` (the first 5 are logged). Shared by the runner and the engine's steps."""
    if not docs:
        return [], errors
    if f.batched:
        results = f.filter_batch(docs)  # model failures are systemic: let them stop the run
        if len(results) != len(docs):
            raise RuntimeError(f"filter {f.name} returned {len(results)} results for {len(docs)} documents")
        return results, errors
    results = []
    for doc in docs:
        try:
            results.append(f.filter(doc))
        except Exception as exc:  # noqa: BLE001 - one odd document must not stop the run
            errors += 1
            if errors <= 5:
                log.warning("%s/%s failed on %s: %r (document dropped)", modality, f.name, doc.id, exc)
            results.append((False, f"filter_error_{type(exc).__name__}"))
    return results, errors


def stage_io(totals: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(documents in, documents kept) of per-stage counts in pipeline order: the first stage's input, the
    last stage's output; (0, 0) without stages."""
    if not totals:
        return 0, 0
    return totals[next(iter(totals))]["in"], totals[next(reversed(totals))]["kept"]


def add_stage_counts(totals: dict[str, dict[str, Any]], stages: dict[str, dict[str, Any]]) -> None:
    for name, st in stages.items():
        tot = totals.setdefault(name, _empty_stage())
        for key in ("in", "kept", "dropped"):
            tot[key] += st[key]
        for reason, n in st["reasons"].items():
            tot["reasons"][reason] = tot["reasons"].get(reason, 0) + n
