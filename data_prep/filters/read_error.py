"""Drop what the reader could not turn into a document (non-UTF-8 bytes, bad JSON, binary files, missing files)."""

from __future__ import annotations

from data_prep.document import Document, FilterResult
from data_prep.filters.base import BaseFilter

READ_ERROR_KEY = "read_error"


class ReadErrorFilter(BaseFilter):
    """Readers never raise on bad input: they set ``metadata['read_error'] = reason`` and this filter drops it."""

    name = "read"

    def filter(self, doc: Document) -> FilterResult:
        reason = doc.metadata.get(READ_ERROR_KEY)
        if reason:
            return False, str(reason)
        return True
