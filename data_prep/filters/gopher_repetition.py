"""Gopher repetition rules (Rae et al. 2021, Table A1) with datatrove's defaults and reason names."""

from __future__ import annotations

import itertools
import operator
import re
from collections import Counter

from data_prep.document import Document, FilterResult
from data_prep.filters import _text
from data_prep.filters.base import BaseFilter

_PARAGRAPH_RE = re.compile(r"\n{2,}")
_LINE_RE = re.compile(r"\n+")


class GopherRepetitionFilter(BaseFilter):
    name = "gopher_repetition"

    def __init__(
        self,
        *,
        dup_line_frac: float = 0.3,
        dup_para_frac: float = 0.3,
        dup_line_char_frac: float = 0.2,
        dup_para_char_frac: float = 0.2,
        top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16)),
        dup_n_grams: tuple[tuple[int, float], ...] = (
            (5, 0.15),
            (6, 0.14),
            (7, 0.13),
            (8, 0.12),
            (9, 0.11),
            (10, 0.10),
        ),
    ):
        self.dup_line_frac = dup_line_frac
        """Max share of lines that repeat an earlier line."""
        self.dup_para_frac = dup_para_frac
        """Max share of paragraphs (split on blank lines) that repeat an earlier paragraph."""
        self.dup_line_char_frac = dup_line_char_frac
        """Max share of characters in repeated lines."""
        self.dup_para_char_frac = dup_para_char_frac
        """Max share of characters in repeated paragraphs."""
        self.top_n_grams = tuple(top_n_grams)
        """(n, max share of characters covered by the most frequent n-gram)."""
        self.dup_n_grams = tuple(sorted(dup_n_grams))
        """(n, max share of characters in n-grams that repeat an earlier one)."""

    def filter(self, doc: Document) -> FilterResult:
        text = doc.text
        n_chars = len(text)
        if n_chars == 0:
            return False, "empty"

        paragraphs = _PARAGRAPH_RE.split(text.strip())
        dup, dup_chars = _text.find_duplicates(paragraphs)
        if dup / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if dup_chars / n_chars > self.dup_para_char_frac:
            return False, "dup_para_char_frac"

        lines = _LINE_RE.split(text)
        dup, dup_chars = _text.find_duplicates(lines)
        if dup / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if dup_chars / n_chars > self.dup_line_char_frac:
            return False, "dup_line_char_frac"

        words = _text.split_words(text)
        prefix = list(itertools.accumulate(map(len, words), initial=0))  # chars of the first i words
        if self.top_n_grams and words:
            # Bound without counting n-grams: an n-gram occurs at most as often as each of its words, so
            # count * len(' '.join(gram)) <= n * max_w(count_w * len_w) + (n - 1) * max_w(count_w).
            word_counts = Counter(words)
            m_chars = max(map(operator.mul, word_counts.values(), map(len, word_counts)))
            m_count = max(word_counts.values())
            for n, max_frac in self.top_n_grams:
                limit = max_frac * n_chars
                if n * m_chars + (n - 1) * m_count <= limit:
                    continue
                if _text.top_ngram_chars(words, n, prefix, limit) > limit:
                    return False, f"top_{n}_gram"

        if self.dup_n_grams:
            n0 = self.dup_n_grams[0][0]
            grams = _text.ngrams(words, n0)
            first = _text.first_occurrence(grams)
            if len(first) == len(grams):
                return True  # no repeated n0-gram, hence no repeated n-gram for any n >= n0 (most prose)
            # The exact scan is a Python loop: run it only for the n whose limit the C-level bound exceeds.
            bound = _text.repeated_coverage_chars(words, grams, first, n0)
            for n, max_frac in self.dup_n_grams:
                limit = max_frac * n_chars
                if bound <= limit:
                    continue
                n_grams = grams if n == n0 else _text.ngrams(words, n)
                if _text.duplicated_ngram_chars(n_grams, prefix, n) > limit:
                    return False, f"duplicated_{n}_n_grams"
        return True
