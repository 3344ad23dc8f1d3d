"""Shared fixtures for the data_prep tests (all small and generated, nothing downloaded)."""

from __future__ import annotations

import pytest

from data_prep.sample_corpus import python_doc_chunks
from tests.data_prep.helpers import make_png


@pytest.fixture(scope="session")
def prose() -> list[str]:
    """Real English prose: Python documentation chunks that pass the Gopher rules."""
    chunks = [
        text for name, text in python_doc_chunks() if name.startswith(("assert#", "exceptions#", "naming#", "import#"))
    ]
    assert len(chunks) >= 4
    return chunks


@pytest.fixture
def png() -> bytes:
    return make_png()
