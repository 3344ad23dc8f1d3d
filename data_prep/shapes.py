"""Coloured shapes drawn with PIL: the image half of the sample corpus's image-text-code triples and of the
synthetic Flickr30K-shaped evaluation set. A shape is a list of ImageDraw operations, so the same list gives
the picture (`draw_shape`) and the program that draws it (`shape_code`)."""

from __future__ import annotations

import io
import random
from typing import Any

COLOURS = {
    "red": "red",
    "green": "green",
    "blue": "blue",
    "yellow": "gold",
    "orange": "orange",
    "purple": "purple",
    "black": "black",
    "cyan": "darkturquoise",
}
BACKGROUNDS = {"white": "white", "light gray": "lightgray", "light yellow": "lightyellow"}
SHAPES = ("circle", "square", "triangle", "wide rectangle", "tall ellipse", "diamond", "cross", "ring")
CAPTIONS = (
    "a {colour} {shape} on a {bg} background",
    "a simple drawing of a {colour} {shape}",
    "{colour} {shape}, centred on a plain {bg} background",
    "one {colour} {shape}",
)
IMAGE_SIZE = 96


def shape_ops(shape: str, rng: random.Random, size: int = IMAGE_SIZE) -> list[tuple[str, list[Any]]]:
    """Drawing operations (ImageDraw method, positional args) for a shape at a jittered position and size."""
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r + 4, size - r - 4), rng.randint(r + 4, size - r - 4)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        return [("ellipse", [box])]
    if shape == "square":
        return [("rectangle", [box])]
    if shape == "triangle":
        return [("polygon", [[(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]])]
    if shape == "wide rectangle":
        return [("rectangle", [[cx - r, cy - r // 2, cx + r, cy + r // 2]])]
    if shape == "tall ellipse":
        return [("ellipse", [[cx - r // 2, cy - r, cx + r // 2, cy + r]])]
    if shape == "diamond":
        return [("polygon", [[(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]])]
    if shape == "cross":
        t = max(3, r // 3)
        return [("rectangle", [[cx - r, cy - t, cx + r, cy + t]]), ("rectangle", [[cx - t, cy - r, cx + t, cy + r]])]
    if shape == "ring":
        return [("ellipse", [box]), ("ellipse", [[cx - r // 2, cy - r // 2, cx + r // 2, cy + r // 2]], "BG")]
    raise ValueError(f"unknown shape {shape!r}")


def shape_code(ops: list[tuple], fill: str, bg: str, size: int = IMAGE_SIZE) -> str:
    """The PIL program that draws exactly this image (it is the 'code' of the image-text-code triple)."""
    lines = [
        "from PIL import Image, ImageDraw",
        "",
        f'img = Image.new("RGB", ({size}, {size}), "{bg}")',
        "draw = ImageDraw.Draw(img)",
    ]
    for op in ops:
        colour = bg if len(op) > 2 else fill
        lines.append(f'draw.{op[0]}({", ".join(repr(a) for a in op[1])}, fill="{colour}")')
    return "\n".join(lines) + "\n"


def draw_shape(ops: list[tuple], fill: str, bg: str, size: int = IMAGE_SIZE):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    for op in ops:
        getattr(draw, op[0])(*op[1], fill=bg if len(op) > 2 else fill)
    return img


def png_bytes(img) -> bytes:
    """`img` (a PIL image) encoded as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
