"""Run one modality's filters over its documents, part by part, with resume.

A part is ``part_size`` consecutive input documents. For each part the runner applies the filters in order (cheap
ones first; batched model filters get all survivors of the part at once), then commits three files atomically:
kept documents, rejects, and last ``state/<modality>/part_NNNNN.json`` (per-stage counts plus filter state such as
new dedup hashes). The state file is the commit mark: a resumed run replays committed parts' state and skips
their documents, then redoes the first uncommitted part. Readers are deterministic, so part boundaries match.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from data_prep.atomic import atomic_write_json
from data_prep.document import Document, normalize_result
from data_prep.faults import maybe_crash
from data_prep.filters.base import BaseFilter
from data_prep.progress import Progress
from data_prep.writers import reject_record, state_name, write_part

log = logging.getLogger(__name__)

_commits = itertools.count(1)  # committed parts in this process, all modalities (for crash injection)


def chunked(items: Iterable[Document], size: int) -> Iterator[list[Document]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _empty_stage() -> dict[str, Any]:
    return {"in": 0, "kept": 0, "dropped": 0, "reasons": {}}


def _committed_state(path) -> dict[str, Any] | None:
    """A part's commit record, or None (with a warning: the part is redone) when it is damaged. Records are
    written atomically, so damage comes from outside; redoing the part rewrites its outputs whole."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        state, why = None, f"{type(err).__name__}: {err}"
    else:
        why = "fields num_docs, filter_state, stages missing"
    if isinstance(state, dict) and {"num_docs", "filter_state", "stages"} <= state.keys():
        return state
    log.warning("%s: damaged commit record (%s); redoing the part", path, why)
    return None


class Pipeline:
    def __init__(self, modality: str, filters: Sequence[BaseFilter], *, out_dir: Path, part_size: int = 1000):
        names = [f.name for f in filters]
        if len(set(names)) != len(names):
            raise ValueError(f"{modality} pipeline: filter names must be unique, got {names}")
        self.modality = modality
        self.filters = list(filters)
        self.out_dir = Path(out_dir)
        self.part_size = part_size
        self.state_dir = self.out_dir / "state" / modality
        self._filter_errors = 0

    def run(self, docs: Iterable[Document]) -> dict[str, dict[str, Any]]:
        """Process every document; returns per-stage counts summed over all parts (resumed ones included)."""
        totals = {f.name: _empty_stage() for f in self.filters}
        resumed = done = 0
        t0 = time.perf_counter()
        progress = Progress(self.modality, None, log.info)
        for index, chunk in enumerate(chunked(docs, self.part_size)):
            state_path = self.state_dir / state_name(index)
            if state_path.is_file():
                state = _committed_state(state_path)
                if state is not None and state["num_docs"] == len(chunk):
                    for f in self.filters:
                        f.load_state(state["filter_state"].get(f.name))
                    add_stage_counts(totals, state["stages"])
                    resumed += 1
                    continue
                if state is not None:
                    log.warning(
                        "%s part %d: committed state has %s docs, input has %d; redoing it",
                        self.modality,
                        index,
                        state["num_docs"],
                        len(chunk),
                    )
            stages = self._process(index, chunk)
            add_stage_counts(totals, stages)
            done += 1
            progress.update(progress.docs + len(chunk))
            maybe_crash("filter", next(_commits))
        if resumed:
            log.info("%s: resumed %d committed parts", self.modality, resumed)
        n_in, kept = stage_io(totals)
        log.info(
            "%s: %d in, %d kept (%d parts processed in %.1fs)",
            self.modality,
            n_in,
            kept,
            done,
            time.perf_counter() - t0,
        )
        return totals

    def _process(self, index: int, chunk: list[Document]) -> dict[str, dict[str, Any]]:
        alive = chunk
        rejects: list[dict[str, Any]] = []
        stages: dict[str, dict[str, Any]] = {}
        for f in self.filters:
            st = stages[f.name] = _empty_stage()
            st["in"] = len(alive)
            results = self._apply(f, alive)
            survivors = []
            for doc, result in zip(alive, results):
                keep, reason = normalize_result(result, default_reason=f.name)
                if keep:
                    survivors.append(doc)
                else:
                    st["reasons"][reason] = st["reasons"].get(reason, 0) + 1
                    rejects.append(reject_record(doc, f.name, reason))
            st["kept"], st["dropped"] = len(survivors), len(alive) - len(survivors)
            alive = survivors
        write_part(self.out_dir, self.modality, index, alive, rejects)
        state = {
            "num_docs": len(chunk),
            "stages": stages,
            "filter_state": {f.name: f.state_delta() for f in self.filters},
        }
        atomic_write_json(self.state_dir / state_name(index), state)
        return stages

    def _apply(self, f: BaseFilter, docs: list[Document]) -> list[Any]:
        results, self._filter_errors = apply_filter(f, docs, modality=self.modality, errors=self._filter_errors)
        return results


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
