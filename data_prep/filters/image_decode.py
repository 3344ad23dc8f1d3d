"""Decode every image fully: corrupt, truncated, non-image, tiny or decompression-bomb files are dropped."""

from __future__ import annotations

import io

from data_prep.document import Document, FilterResult
from data_prep.filters.base import BaseFilter

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


class ImageDecodeFilter(BaseFilter):
    name = "image_decode"

    def __init__(self, *, min_side: int = 16, max_pixels: int = 64_000_000, formats: tuple[str, ...] = FORMATS):
        self.min_side = min_side
        """Images with a side shorter than this are dropped (``too_small``)."""
        self.max_pixels = max_pixels
        """Images with more pixels are dropped before decoding (``too_many_pixels``)."""
        self.formats = tuple(formats)
        """PIL format names accepted (``unsupported_format`` otherwise)."""

    def filter(self, doc: Document) -> FilterResult:
        from PIL import Image, UnidentifiedImageError

        if not doc.data:
            return False, "empty_file"
        try:
            with Image.open(io.BytesIO(doc.data)) as im:
                fmt, (w, h) = im.format, im.size
                if fmt not in self.formats:
                    return False, "unsupported_format"
                if w * h > self.max_pixels:
                    return False, "too_many_pixels"
                if min(w, h) < self.min_side:
                    return False, "too_small"
                im.verify()  # checksums / structure, without decoding pixels
            with Image.open(io.BytesIO(doc.data)) as im:
                im.load()  # decode all pixels: catches truncated files that verify() lets through
        except UnidentifiedImageError:
            return False, "not_an_image"
        except Image.DecompressionBombError:
            return False, "too_many_pixels"
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError):
            return False, "corrupt_image"
        doc.metadata.update(width=w, height=h, format=fmt)
        return True
