"""Triples for alignment: read `triples/triples.jsonl` (data_prep/triples.py), drop and count bad rows, embed the
images once with the frozen tower (cached beside the triples), tokenise text and code, split off a held-out set.

Rows are dropped, never fatal, for: "broken_json" (a line that does not parse to an object), "unknown_kind",
"duplicate_id", "empty_text", "empty_code", "missing_image" (no image field, or no such file) and
"unreadable_image" (PIL cannot decode it). `AlignData.dropped` counts them by reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import DataError

log = logging.getLogger("r1_ds.align")

KIND_MODALITIES = {
    "image-text-code": (True, True, True),
    "image-text": (True, True, False),
    "text-code": (False, True, True),
}
"""Which of (image, text, code) each triple kind holds."""


@dataclass
class Row:
    id: str
    kind: str
    has: tuple[bool, bool, bool]
    image: str | None = None  # absolute path
    views: list[str] = field(default_factory=list)
    text: str = ""
    code: str = ""


def parse_triples(path: str) -> tuple[list[Row], Counter]:
    """Rows of a triples.jsonl (image paths made absolute against the prep folder two levels up) and the count
    of dropped rows by reason; images are checked later, when they are embedded."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    rows, dropped, seen = [], Counter(), set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped["broken_json"] += 1
                continue
            if not isinstance(rec, dict):
                dropped["broken_json"] += 1
                continue
            has = KIND_MODALITIES.get(rec.get("kind"))
            if has is None:
                dropped["unknown_kind"] += 1
                continue
            rid = str(rec.get("id"))
            if rid in seen:
                dropped["duplicate_id"] += 1
                continue
            text, code, image = rec.get("text"), rec.get("code"), rec.get("image")
            if has[1] and not (isinstance(text, str) and text.strip()):
                dropped["empty_text"] += 1
                continue
            if has[2] and not (isinstance(code, str) and code.strip()):
                dropped["empty_code"] += 1
                continue
            if has[0] and not (isinstance(image, str) and image):
                dropped["missing_image"] += 1
                continue
            seen.add(rid)
            views = (
                [os.path.normpath(os.path.join(root, v)) for v in rec.get("image_views") or [] if isinstance(v, str)]
                if has[0]
                else []
            )
            image = os.path.normpath(os.path.join(root, image)) if has[0] else None
            rows.append(
                Row(
                    id=rid,
                    kind=rec["kind"],
                    has=has,
                    image=image,
                    views=views,
                    text=text if has[1] else "",
                    code=code if has[2] else "",
                )
            )
    return rows, dropped


def held_out(row_id: str, percent: float) -> bool:
    """Deterministic split by a hash of the row id: about `percent` % of rows are held out."""
    h = int.from_bytes(hashlib.sha1(row_id.encode()).digest()[:4], "little")
    return (h % 10_000) < percent * 100


@dataclass
class AlignData:
    """Tokenised rows and image embeddings, split into train and held-out."""

    train: list[dict]
    held_out: list[dict]
    dropped: Counter
    image_dim: int

    def summary(self) -> dict:
        kinds = Counter(tuple(r["has"]) for r in self.train + self.held_out)
        return {
            "train_rows": len(self.train),
            "held_out_rows": len(self.held_out),
            "dropped": dict(self.dropped),
            "rows_by_modalities": {str(k): v for k, v in kinds.items()},
        }


def load_image_embeddings(rows: list[Row], cache_file: str, build_tower) -> tuple[dict[str, torch.Tensor], dict]:
    """{path: embedding} of every image and view of `rows`, and {path: reason} of those that failed, from
    `cache_file` when it has them all, else computed with `build_tower()` -> (visual, preprocess, dim) and saved.

    The cache names images relative to its own folder, so a prep folder moved or copied whole (to a GPU machine
    without open_clip, say) keeps its cache: the tower is built only for images the cache lacks."""
    from data_prep.atomic import atomic_open

    from .image_tower import embed_images

    base = os.path.dirname(os.path.abspath(cache_file))

    def absolute(paths):  # an absolute name (a cache of an older layout) stays as it is
        return [os.path.normpath(os.path.join(base, p)) for p in paths]

    wanted = sorted({p for r in rows if r.image for p in [r.image, *r.views]})
    cached = torch.load(cache_file, weights_only=True) if os.path.isfile(cache_file) else {"paths": [], "failed": {}}
    paths, failed = absolute(cached["paths"]), dict(zip(absolute(cached["failed"]), cached["failed"].values()))
    if not {os.path.normpath(p) for p in wanted} <= set(paths) | set(failed):
        visual, preprocess, _ = build_tower()
        emb, failed = embed_images(wanted, visual, preprocess)
        ok = [i for i, p in enumerate(wanted) if p not in failed]
        paths, embeds = [os.path.normpath(wanted[i]) for i in ok], emb[ok] if ok else emb[:0]
        failed = {os.path.normpath(p): why for p, why in failed.items()}
        os.makedirs(base, exist_ok=True)
        with atomic_open(cache_file, "wb") as f:
            torch.save(
                {
                    "paths": [os.path.relpath(p, base) for p in paths],
                    "embeds": embeds,
                    "failed": {os.path.relpath(p, base): why for p, why in failed.items()},
                },
                f,
            )
        log.info("image tower embeddings of %d images cached in %s (%d failed)", len(ok), cache_file, len(failed))
    else:
        embeds = cached["embeds"]
    table = dict(zip(paths, embeds)) if paths else {}
    return table, failed


def build_align_data(
    rows: list[Row],
    dropped: Counter,
    images: dict[str, torch.Tensor],
    failed: dict[str, str],
    tokenizer,
    *,
    text_len: int,
    code_len: int,
    vocab_size: int,
    held_out_percent: float,
) -> AlignData:
    """Drop rows whose image failed (by reason), tokenise, split. Views that failed are skipped silently."""
    dropped = Counter(dropped)
    dim = next(iter(images.values())).shape[0] if images else 1
    train, held = [], []
    max_id = -1
    for r in rows:
        if r.has[0] and r.image not in images:
            dropped[failed.get(r.image, "missing_image")] += 1
            continue
        text = tokenize(tokenizer, r.text, text_len) if r.has[1] else []
        code = tokenize(tokenizer, r.code, code_len) if r.has[2] else []
        max_id = max([max_id, *text, *code])
        item = {
            "id": r.id,
            "has": r.has,
            "text": text,
            "code": code,
            "image": [images[p] for p in [r.image, *r.views] if p in images] if r.has[0] else [],
        }
        (held if held_out(r.id, held_out_percent) else train).append(item)
    if max_id >= vocab_size:
        raise DataError(
            f"the alignment tokenizer produces token id {max_id} but the model has vocab_size={vocab_size}. "
            f"Fix: set model.overrides.vocab_size > {max_id} (the tokenizer's vocabulary size)."
        )
    return AlignData(train=train, held_out=held, dropped=dropped, image_dim=dim)


def sample_order(train: list[dict], image_repeats: int) -> list[int]:
    """Sampler positions -> training rows: each row with an image `image_repeats` times, the others once."""
    return [i for i, it in enumerate(train) for _ in range(image_repeats if it["image"] else 1)]


def tokenize(tokenizer, text: str, limit: int) -> list[int]:
    """The token ids of `text` (no special tokens), cut to `limit`: how training and evaluation read text and code."""
    return tokenizer(text, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"][:limit]


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, mask), both (N, L): the sequences right-padded to the longest; an empty one becomes one pad token."""
    seqs = [s or [pad_id] for s in seqs]
    length = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return tokens, mask


def collate(items: list[dict], *, image_dim: int, pad_id: int, view_rng: np.random.Generator | None = None) -> dict:
    """A batch for AlignModel: texts then codes as one right-padded token matrix, image embeddings (a random view
    per row when `view_rng` is given, else the original image), and the (N, 3) modality mask."""
    n = len(items)
    tokens, mask = pad_right([it["text"] for it in items] + [it["code"] for it in items], pad_id)
    image = torch.zeros(n, image_dim)
    for i, it in enumerate(items):
        if it["image"]:
            k = int(view_rng.integers(len(it["image"]))) if view_rng is not None else 0
            image[i] = it["image"][k]
    has = torch.tensor([it["has"] for it in items], dtype=torch.bool)
    return {"tokens": tokens, "token_mask": mask, "image": image, "has": has}
