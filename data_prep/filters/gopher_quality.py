"""Gopher quality rules (Rae et al. 2021) with datatrove's defaults; words are whitespace tokens."""

from __future__ import annotations

from data_prep.document import Document, FilterResult
from data_prep.filters import _text
from data_prep.filters.base import BaseFilter

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
# Languages the stop-word rule has words for. A document labelled with another language by the language stage
# skips the rule (English stop words say nothing about German prose); unlabelled documents are treated as English.
STOP_WORD_LANGUAGES = frozenset({"en"})


class GopherQualityFilter(BaseFilter):
    name = "gopher_quality"

    def __init__(
        self,
        *,
        min_doc_words: int = 50,
        max_doc_words: int = 100_000,
        min_avg_word_length: float = 3,
        max_avg_word_length: float = 10,
        max_symbol_word_ratio: float = 0.1,
        max_bullet_lines_ratio: float = 0.9,
        max_ellipsis_lines_ratio: float = 0.3,
        max_non_alpha_words_ratio: float = 0.8,
        min_stop_words: int = 2,
    ):
        self.min_doc_words = min_doc_words
        """Fewer non-symbol words: ``too_few_words``."""
        self.max_doc_words = max_doc_words
        """More non-symbol words: ``too_many_words``."""
        self.min_avg_word_length = min_avg_word_length
        """Mean non-symbol word length below this: ``avg_word_length_low``."""
        self.max_avg_word_length = max_avg_word_length
        """Mean non-symbol word length above this: ``avg_word_length_high``."""
        self.max_symbol_word_ratio = max_symbol_word_ratio
        """Max ('#' count / words) and max (ellipsis count / words)."""
        self.max_bullet_lines_ratio = max_bullet_lines_ratio
        """Max share of lines starting with a bullet ('•' or '-')."""
        self.max_ellipsis_lines_ratio = max_ellipsis_lines_ratio
        """Max share of lines ending with an ellipsis."""
        self.max_non_alpha_words_ratio = max_non_alpha_words_ratio
        """Min share of words that contain a letter (datatrove's name for it, kept for familiarity)."""
        self.min_stop_words = min_stop_words
        """Min count of the Gopher stop words {the, be, to, of, and, that, have, with}; applied to English and to
        documents without a language label only."""

    def filter(self, doc: Document) -> FilterResult:
        text = doc.text
        words = _text.split_words(text)
        n_words = len(words)
        punct = _text.PUNCTUATION
        non_symbol = [w for w in words if not punct.issuperset(w)]
        if not non_symbol or len(non_symbol) < self.min_doc_words:  # none (or all symbols): no length to average
            return False, "too_few_words"
        if len(non_symbol) > self.max_doc_words:
            return False, "too_many_words"
        avg_len = sum(map(len, non_symbol)) / len(non_symbol)
        if avg_len < self.min_avg_word_length:
            return False, "avg_word_length_low"
        if avg_len > self.max_avg_word_length:
            return False, "avg_word_length_high"
        if text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "too_many_hashes"
        if (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio:
            return False, "too_many_ellipsis"

        lines = text.splitlines() or [""]
        bullets = sum(1 for s in lines if s.lstrip().startswith(("•", "-")))
        if bullets / len(lines) > self.max_bullet_lines_ratio:
            return False, "too_many_bullet_lines"
        ellipsis = sum(1 for s in lines if s.rstrip().endswith(("...", "…")))
        if ellipsis / len(lines) > self.max_ellipsis_lines_ratio:
            return False, "too_many_ellipsis_lines"

        alpha_search = _text.ALPHA_RE.search
        with_alpha = sum(1 for w in words if alpha_search(w))
        if with_alpha / n_words < self.max_non_alpha_words_ratio:
            return False, "too_few_alpha_words"
        if doc.metadata.get("language", "en") not in STOP_WORD_LANGUAGES:
            return True
        stops = STOP_WORDS
        if sum(1 for w in words if w in stops) < self.min_stop_words:
            return False, "too_few_stop_words"
        return True
