"""The augment stage, per modality (configurable through AugmentConfig / CLI flags):

- image: ``image_views`` extra views per kept image, each a random resized crop (area share in ``crop_scale``,
  aspect ratio 3/4-4/3) plus a horizontal flip with probability 0.5 (skipped when the caption says left/right,
  since a flip would make it false). Views are seeded by the image hash, so reruns produce the same files.
- code: (docstring, code) pairs from kept Python files via ``ast``: the docstring becomes the text and the function
  or class source without its docstring the code, at most ``docstring_pairs_per_file`` per file.
- text: none. Pretraining text is used as written; paraphrase or back-translation would need a generator model.
"""

from __future__ import annotations

import ast
import hashlib
import io
import random
import re
from dataclasses import dataclass
from typing import Any

_SIDE_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)


@dataclass(frozen=True)
class AugmentConfig:
    image_views: int = 2
    """Augmented views per kept image (0: none)."""
    crop_scale: tuple[float, float] = (0.6, 1.0)
    """Range of the crop's share of the image area."""
    flip: bool = True
    """Random horizontal flips (p = 0.5), never for captions that mention left or right."""
    docstring_pairs_per_file: int = 4
    """Max (docstring, code) text-code pairs per kept Python file (0: none)."""
    min_docstring_chars: int = 20
    """Shorter docstrings make no pair."""
    max_code_chars: int = 4000
    """Longer functions/classes make no pair."""
    seed: int = 0
    """Mixed into every per-image random generator."""


def image_views(data: bytes, caption: str, cfg: AugmentConfig) -> list[Any]:
    """``cfg.image_views`` PIL images: random resized crops (+ flips), deterministic per (image bytes, seed)."""
    from PIL import Image, ImageOps

    if cfg.image_views <= 0:
        return []
    rng = random.Random(int.from_bytes(hashlib.sha1(data).digest()[:8], "little") ^ cfg.seed)
    allow_flip = cfg.flip and not _SIDE_WORDS.search(caption)
    with Image.open(io.BytesIO(data)) as im:
        base = im.convert("RGB")
    w, h = base.size
    views = []
    for _ in range(cfg.image_views):
        area = w * h * rng.uniform(*cfg.crop_scale)
        ratio = rng.uniform(3 / 4, 4 / 3)
        cw = max(1, min(w, round((area * ratio) ** 0.5)))
        ch = max(1, min(h, round((area / ratio) ** 0.5)))
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        view = base.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BICUBIC)
        if allow_flip and rng.random() < 0.5:
            view = ImageOps.mirror(view)
        views.append(view)
    return views


def docstring_pairs(source: str, cfg: AugmentConfig) -> list[dict[str, str]]:
    """[{"name", "text" (docstring), "code" (definition without its docstring)}] for a Python module."""
    if cfg.docstring_pairs_per_file <= 0:
        return []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    lines = source.splitlines(keepends=True)
    pairs = []
    for node in ast.walk(tree):
        if len(pairs) >= cfg.docstring_pairs_per_file:
            break
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        doc = ast.get_docstring(node)
        if not doc or len(doc) < cfg.min_docstring_chars or node.end_lineno is None:
            continue
        doc_node = node.body[0]
        start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
        # Drop the docstring's own lines; keep everything else of the definition verbatim.
        code_lines = lines[start : doc_node.lineno - 1] + lines[doc_node.end_lineno : node.end_lineno]
        if len(node.body) == 1:  # only a docstring: the definition needs a body to stay valid Python
            indent = re.match(r"\s*", lines[doc_node.lineno - 1]).group(0)
            code_lines.append(f"{indent}...\n")
        code = "".join(code_lines)
        if len(code) > cfg.max_code_chars:
            continue
        pairs.append({"name": node.name, "text": doc, "code": code})
    return pairs
