"""Augment stage: deterministic image views (flip suppressed for left/right captions) and docstring/code pairs."""

import ast

from data_prep.augment import AugmentConfig, docstring_pairs, image_views
from tests.data_prep.helpers import make_png

MODULE = '''
import functools


@functools.lru_cache
def area(w, h):
    """Return the area of a w by h rectangle, in square units."""
    return w * h


class Box:
    """A box that only has a docstring and nothing else at all."""


def short():
    """Too short."""
    return 1
'''


def test_docstring_pairs():
    pairs = docstring_pairs(MODULE, AugmentConfig())
    assert [p["name"] for p in pairs] == ["area", "Box"]
    area = pairs[0]
    assert area["text"].startswith("Return the area")
    assert area["code"].startswith("@functools.lru_cache\ndef area(w, h):")
    assert "Return the area" not in area["code"]
    for p in pairs:
        ast.parse(p["code"])  # still valid Python without its docstring
    assert docstring_pairs(MODULE, AugmentConfig(docstring_pairs_per_file=1)) == pairs[:1]
    assert docstring_pairs("def broken(:\n", AugmentConfig()) == []


def test_image_views_deterministic_and_flip_rule():
    from PIL import Image

    # left half red, right half blue: a flip swaps them, a crop keeps the order
    img = Image.new("RGB", (64, 64), "red")
    img.paste(Image.new("RGB", (32, 64), "blue"), (32, 0))
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    cfg = AugmentConfig(image_views=16, crop_scale=(0.9, 1.0), flip=True)
    a, b = image_views(data, "red and blue halves", cfg), image_views(data, "red and blue halves", cfg)
    assert [v.tobytes() for v in a] == [v.tobytes() for v in b]
    assert all(v.size == (64, 64) for v in a)
    flipped = [v.getpixel((2, 32))[2] > 128 for v in a]  # blue on the left means flipped
    assert any(flipped) and not all(flipped)
    sided = image_views(data, "red on the left, blue on the right", cfg)
    assert not any(v.getpixel((2, 32))[2] > 128 for v in sided)
    assert image_views(make_png(), "x", AugmentConfig(image_views=0)) == []
