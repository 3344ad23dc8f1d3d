"""Small builders shared by the data_prep tests (imported as ``tests.data_prep.helpers``, like ``tests.train_runs``)."""

from __future__ import annotations

import io

from data_prep.document import Document


def make_png(size=(48, 48), colour="red") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def doc(text: str, modality: str = "text", **meta) -> Document:
    return Document(id=meta.pop("id", "d"), text=text, modality=modality, metadata=dict(meta))
