"""C4 rules (Raffel et al. 2020) as in datatrove's C4QualityFilter, with FineWeb's setting of keeping lines
without terminal punctuation. Line-level rules remove lines: the document text is rewritten, and unlike
datatrove we keep paragraph breaks. The lorem-ipsum and curly-bracket rules and the sentence minimum drop the
whole document.
"""

from __future__ import annotations

import re

from data_prep.document import Document, FilterResult
from data_prep.filters import _text
from data_prep.filters.base import BaseFilter

_CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_END_PUNCTUATION = (".", "?", "!", '"', "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


class C4QualityFilter(BaseFilter):
    name = "c4_quality"

    def __init__(
        self,
        *,
        remove_citations: bool = True,
        filter_no_terminal_punct: bool = False,
        min_num_sentences: int = 5,
        min_words_per_line: int = 3,
        max_word_length: int = 1000,
        filter_lorem_ipsum: bool = True,
        filter_javascript: bool = True,
        filter_curly_bracket: bool = True,
        filter_policy: bool = True,
    ):
        self.remove_citations = remove_citations
        """Strip ``[1]``, ``[edit]``, ``[citation needed]`` markers."""
        self.filter_no_terminal_punct = filter_no_terminal_punct
        """Remove lines not ending in . ? ! " ' (C4: True; FineWeb and our default: False)."""
        self.min_num_sentences = min_num_sentences
        """Drop documents with fewer sentences left (``too_few_sentences``); -1 disables."""
        self.min_words_per_line = min_words_per_line
        """Remove lines with fewer words."""
        self.max_word_length = max_word_length
        """Remove lines containing a longer word."""
        self.filter_lorem_ipsum = filter_lorem_ipsum
        """Drop documents containing 'lorem ipsum' (``lorem_ipsum``)."""
        self.filter_javascript = filter_javascript
        """Remove lines mentioning 'javascript'."""
        self.filter_curly_bracket = filter_curly_bracket
        """Drop documents with '{' in a kept line (``curly_bracket``): C4's code detector."""
        self.filter_policy = filter_policy
        """Remove cookie / terms-of-use policy lines."""

    def filter(self, doc: Document) -> FilterResult:
        kept: list[str] = []
        n_sentences = 0
        for line in doc.text.splitlines():
            line = line.strip()
            if not line:
                # Deviation from datatrove: keep paragraph breaks (one blank line) instead of gluing paragraphs.
                if kept and kept[-1]:
                    kept.append("")
                continue
            words = line.split()
            if self.max_word_length > 0 and any(len(w) > self.max_word_length for w in words):
                continue
            if self.remove_citations:
                line = _CITATION_RE.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(_END_PUNCTUATION) or line.endswith("...")):
                continue
            if len(words) < self.min_words_per_line:
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return False, "lorem_ipsum"
            if self.filter_javascript and "javascript" in lower:
                continue
            if self.filter_curly_bracket and "{" in line:
                return False, "curly_bracket"
            if self.filter_policy and any(p in lower for p in _POLICY):
                continue
            if self.min_num_sentences > 0:
                n_sentences += len(_text.SENTENCE_SPLIT_RE.split(line))
            kept.append(line)
        if self.min_num_sentences > 0 and n_sentences < self.min_num_sentences:
            return False, "too_few_sentences"
        doc.text = "\n".join(kept).strip()
        return True
