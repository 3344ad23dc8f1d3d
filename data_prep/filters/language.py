"""Language identification stage: labels every document with ``language`` and ``language_score`` and, when a list
of languages is given, drops the others as ``language_not_wanted`` (FineWeb's LanguageFilter, with a model that
ships inside a package instead of a fastText download).
"""

from __future__ import annotations

from collections.abc import Sequence

from data_prep.document import Document, FilterResult
from data_prep.filters.base import BaseFilter
from data_prep.langid import PACKAGED, LanguageIdentifier

LANGUAGE_KEY, SCORE_KEY = "language", "language_score"


class LanguageFilter(BaseFilter):
    name = "language"

    def __init__(self, *, languages: Sequence[str] = (), min_score: float = 0.0, model: str = PACKAGED):
        self.languages = sorted(languages)
        """Keep only these ISO 639-1 codes (e.g. ``en``, ``de``); empty: keep every language (label only)."""
        self.min_score = min_score
        """With ``languages``: a document whose top language scores below this is dropped as ``low_language_score``."""
        self.model = model
        """``py3langid`` (the model inside the package) or a langid.py model file."""
        self._ident = LanguageIdentifier(model)

    def filter(self, doc: Document) -> FilterResult:
        language, score = self._ident.identify(doc.text)
        doc.metadata[LANGUAGE_KEY] = language
        doc.metadata[SCORE_KEY] = round(score, 4)
        if not self.languages:
            return True
        if language not in self.languages:
            return False, "language_not_wanted"
        if score < self.min_score:
            return False, "low_language_score"
        return True
