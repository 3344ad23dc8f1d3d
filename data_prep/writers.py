"""Per-part outputs: kept documents (``kept/<modality>/part_NNNNN.jsonl``) and rejects with their reason
(``rejects/<modality>/part_NNNNN.jsonl``). Each file is written atomically; image bytes of kept pairs go to a
content-addressed store ``kept/image/files/<sha1><ext>`` (idempotent, so a resumed part rewrites nothing wrong).

JSONL keeps the outputs streamable and readable by ``datasets.load_dataset("json", data_files=...)``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_write_bytes, atomic_write_jsonl
from data_prep.document import IMAGE, Document

REJECT_PREVIEW_CHARS = 2000
IMAGE_STORE = Path("kept") / "image" / "files"


def part_name(index: int) -> str:
    return f"part_{index:05d}.jsonl"


def state_name(index: int) -> str:
    return f"part_{index:05d}.json"


def kept_record(doc: Document, out_dir: Path) -> dict[str, Any]:
    if doc.modality != IMAGE:
        return {"id": doc.id, "text": doc.text, "source": doc.source, "metadata": doc.metadata}
    image_sha1 = hashlib.sha1(doc.data or b"").hexdigest()
    rel = IMAGE_STORE / f"{image_sha1}{doc.metadata.get('image_ext') or '.img'}"
    if not (out_dir / rel).exists():
        atomic_write_bytes(out_dir / rel, doc.data or b"")
    return {
        "id": doc.id,
        "caption": doc.text,
        "image": rel.as_posix(),
        "source": doc.source,
        "metadata": {**doc.metadata, "image_sha1": image_sha1},
    }


def reject_record(doc: Document, stage: str, reason: str) -> dict[str, Any]:
    text = doc.text or ""
    return {
        "id": doc.id,
        "source": doc.source,
        "stage": stage,
        "reason": reason,
        "text": text[:REJECT_PREVIEW_CHARS],
        "text_truncated": len(text) > REJECT_PREVIEW_CHARS,
        "metadata": doc.metadata,
    }


def write_part(out_dir: Path, modality: str, index: int, kept: list[Document], rejects: list[dict[str, Any]]) -> None:
    records = [kept_record(d, out_dir) for d in kept]
    atomic_write_jsonl(out_dir / "kept" / modality / part_name(index), records)
    atomic_write_jsonl(out_dir / "rejects" / modality / part_name(index), rejects)
