"""Image-text-code triples (and pairs where a modality is missing) for the cross-modal alignment training.

Written to ``OUT/triples/triples.jsonl``, one JSON object per line:

    {"id": str, "kind": "image-text-code" | "image-text" | "text-code",
     "image": "kept/image/files/<sha1>.png" | null,      # relative to OUT
     "image_views": ["triples/views/<sha1>_v0.png", ...],   # augmented views, relative to OUT
     "text": str | null, "code": str | null, "code_language": str | null,
     "source": str, "metadata": {...}}

Sources: kept image pairs (a ``code`` field in the manifest makes them triples; the sample corpus's shapes carry
the PIL code that draws them) and docstring/code pairs from kept Python files. ``triples/meta.json`` (written
last, it marks the stage done) holds counts per kind and the augment config. ``load_triples`` reads them back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_open, atomic_write_json
from data_prep.augment import AugmentConfig, docstring_pairs, image_views

log = logging.getLogger(__name__)


def iter_kept(out_dir: Path, modality: str) -> Iterator[dict[str, Any]]:
    """Kept records of one modality in part order."""
    for part in sorted((out_dir / "kept" / modality).glob("part_*.jsonl")):
        with open(part, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def build_triples(out_dir: Path, cfg: AugmentConfig) -> dict[str, Any]:
    out_dir = Path(out_dir)
    meta_path = out_dir / "triples" / "meta.json"
    if meta_path.is_file():  # written last and atomically: the triples are complete
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            meta = err
        if isinstance(meta, dict):
            return meta
        log.warning("%s is damaged (%s); building the triples again", meta_path, meta)
    counts = {"image-text-code": 0, "image-text": 0, "text-code": 0}
    n_views = 0
    views_dir = out_dir / "triples" / "views"
    views_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_dir / "triples" / "triples.jsonl", "w") as f:
        for rec in iter_kept(out_dir, "image"):
            image_rel = rec["image"]
            sha1 = rec["metadata"].get("sha1") or Path(image_rel).stem  # pair hash: caption-aware views
            view_paths = [f"triples/views/{sha1}_v{k}.png" for k in range(cfg.image_views)]
            if cfg.image_views and not all((out_dir / p).is_file() for p in view_paths):
                data = (out_dir / image_rel).read_bytes()
                for path, view in zip(view_paths, image_views(data, rec["caption"], cfg)):
                    with atomic_open(out_dir / path, "wb") as vf:
                        view.save(vf, format="PNG")
            n_views += len(view_paths)
            code = rec["metadata"].get("code")
            kind = "image-text-code" if code else "image-text"
            counts[kind] += 1
            _write(
                f,
                {
                    "id": rec["id"],
                    "kind": kind,
                    "image": image_rel,
                    "image_views": view_paths,
                    "text": rec["caption"],
                    "code": code,
                    "code_language": rec["metadata"].get("code_language") if code else None,
                    "source": rec["source"],
                    "metadata": {k: v for k, v in rec["metadata"].items() if k != "code"},
                },
            )
        for rec in iter_kept(out_dir, "code"):
            if rec["metadata"].get("language") != "python":
                continue
            for pair in docstring_pairs(rec["text"], cfg):
                counts["text-code"] += 1
                _write(
                    f,
                    {
                        "id": f"{rec['id']}::{pair['name']}",
                        "kind": "text-code",
                        "image": None,
                        "image_views": [],
                        "text": pair["text"],
                        "code": pair["code"],
                        "code_language": "python",
                        "source": rec["source"],
                        "metadata": {"name": pair["name"]},
                    },
                )
    meta = {
        "format": "jsonl; paths relative to the prep output folder (see data_prep/triples.py)",
        "counts": counts,
        "num_records": sum(counts.values()),
        "num_image_views": n_views,
        "augment": dataclasses.asdict(cfg),
    }
    atomic_write_json(meta_path, meta)
    log.info("triples: %s, %d image views", counts, n_views)
    return meta


def _write(f, rec: dict[str, Any]) -> None:
    f.write(json.dumps(rec, ensure_ascii=False))
    f.write("\n")


def load_triples(out_dir: str | Path, *, kinds: tuple[str, ...] | None = None) -> Iterator[dict[str, Any]]:
    """Yield triples with ``image`` / ``image_views`` turned into absolute paths; optionally only some kinds."""
    out_dir = Path(out_dir)
    with open(out_dir / "triples" / "triples.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if kinds and rec["kind"] not in kinds:
                continue
            if rec["image"]:
                rec["image"] = str(out_dir / rec["image"])
            rec["image_views"] = [str(out_dir / p) for p in rec["image_views"]]
            yield rec
