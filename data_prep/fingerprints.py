"""Which prep stages are still current: each stage records a fingerprint of what it reads, and a rerun redoes a
stage whose fingerprint changed (and, through the chain, every stage after it).

A fingerprint is a sha256 over JSON: the filters of a modality fingerprint their input files (path, size, mtime)
and the run's settings; the tokenizer fingerprints the filter stages it reads; the shards fingerprint the
tokenizer's bytes and the same filter stages. Records live in ``OUT/state/stages/<stage>.json`` and hold only the
digest, so an unchanged rerun or a resumed crash writes byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_write_json
from data_prep.readers._files import walk_files

log = logging.getLogger(__name__)

STAGES_DIR = Path("state") / "stages"


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def inputs_digest(roots: list[Path], *, out: Path) -> str:
    """sha256 over [root, relative path, size, mtime_ns] of every file under ``roots``, hashed as they are walked
    (a listing of millions of files is never held); our own OUT is never walked into.

    A root inside OUT is the sample corpus, rebuilt identically from the settings: it is listed relative to OUT
    and without mtimes, so two runs of the same settings in different folders agree.
    """
    out = out.resolve()
    h = hashlib.sha256()
    for root in roots:
        resolved = root.resolve()
        ours = resolved == out or out in resolved.parents
        name = resolved.relative_to(out).as_posix() if ours else str(root)
        for f in walk_files(resolved, (out,)):  # the files the readers read, in their order
            st = f.stat()
            rel = "." if f == resolved else f.relative_to(resolved).as_posix()
            h.update(json.dumps([name, rel, st.st_size, None if ours else st.st_mtime_ns]).encode("utf-8") + b"\n")
    return h.hexdigest()


def refresh_stage(out: Path, stage: str, fingerprint: str, outputs: list[Path]) -> bool:
    """True when ``stage`` last ran on the same fingerprint (its outputs stay, to be resumed or reused). Otherwise
    remove its outputs, record the new fingerprint and return False: the caller redoes the stage."""
    record = out / STAGES_DIR / f"{stage}.json"
    old = None
    if record.is_file():
        try:
            old = json.loads(record.read_text(encoding="utf-8")).get("fingerprint")
        except (ValueError, AttributeError):  # a damaged record: the stage is redone
            old = None
    if old == fingerprint:
        return True
    present = [p for p in outputs if p.exists()]
    if present:
        why = "its inputs changed" if old else "it has no record of its inputs"
        log.warning("%s: %s; removing %s and redoing it", stage, why, ", ".join(str(p) for p in present))
        for p in present:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    atomic_write_json(record, {"fingerprint": fingerprint})
    return False
