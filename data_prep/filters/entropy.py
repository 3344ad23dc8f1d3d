"""Normalised word entropy over fixed windows: the specification's "information entropy above 0.8", made well defined.

Definition (docs/data.md, "Thresholds"): lowercase the text, take ``\\w+`` word tokens, cut them into consecutive
windows of N = 64 tokens, merge a tail of fewer than 32 tokens into the previous window, and score each window
with ``H(p) / ln N`` where p is the window's word distribution and N its token count. 1.0 means every token is
distinct, 0.0 one token repeated. A document's score is the mean over its windows (or the min, configurable);
documents with fewer than 32 tokens are not scored (the length rules handle them).
"""

from __future__ import annotations

import math
import re
from collections import Counter

from data_prep.document import Document, FilterResult
from data_prep.filters.base import BaseFilter

_WORD_RE = re.compile(r"\w+")


def normalized_entropy(tokens: list[str]) -> float:
    """H(p) / ln N for the token distribution p of one window of N tokens (N >= 2)."""
    n = len(tokens)
    if n < 2:
        raise ValueError(f"normalized_entropy needs at least 2 tokens, got {n}")
    # H = ln N - (1/N) sum c ln c  =>  H / ln N = 1 - sum c ln c / (N ln N)
    s = sum(c * math.log(c) for c in Counter(tokens).values() if c > 1)
    return 1.0 - s / (n * math.log(n))


def entropy_windows(tokens: list[str], *, window: int = 64, min_tail: int = 32) -> list[list[str]]:
    """Consecutive windows of ``window`` tokens; a tail shorter than ``min_tail`` joins the previous window.

    Returns [] when there are fewer than ``min_tail`` tokens (too short to score).
    """
    if len(tokens) < min_tail:
        return []
    windows = [tokens[i : i + window] for i in range(0, len(tokens), window)]
    if len(windows) > 1 and len(windows[-1]) < min_tail:
        tail = windows.pop()
        windows[-1] = windows[-1] + tail
    return windows


def word_tokens(text: str) -> list[str]:
    """Lowercased Unicode ``\\w+`` tokens."""
    return _WORD_RE.findall(text.lower())


def text_entropy_scores(text: str, *, window: int = 64, min_tail: int = 32) -> list[float]:
    """One normalised entropy per window of ``text``; [] when the text is too short to score."""
    return [normalized_entropy(w) for w in entropy_windows(word_tokens(text), window=window, min_tail=min_tail)]


class EntropyFilter(BaseFilter):
    name = "entropy"

    def __init__(self, *, threshold: float = 0.8, window: int = 64, min_tail: int = 32, aggregate: str = "mean"):
        if aggregate not in ("mean", "min"):
            raise ValueError(f"EntropyFilter aggregate={aggregate!r}: must be 'mean' or 'min'")
        if not 2 <= min_tail <= window:
            raise ValueError(f"EntropyFilter min_tail={min_tail}, window={window}: need 2 <= min_tail <= window")
        self.threshold = threshold
        """Keep documents whose score is above this (0.8: calibrated, see docs/data.md)."""
        self.window = window
        """Word tokens per window (N = 64); the threshold is only meaningful for this N."""
        self.min_tail = min_tail
        """A tail shorter than this merges into the previous window; shorter documents are not scored."""
        self.aggregate = aggregate
        """How window scores make the document score: ``mean`` or ``min``."""

    def filter(self, doc: Document) -> FilterResult:
        scores = text_entropy_scores(doc.text, window=self.window, min_tail=self.min_tail)
        if not scores:
            doc.metadata["entropy"] = None
            return True
        score = sum(scores) / len(scores) if self.aggregate == "mean" else min(scores)
        doc.metadata["entropy"] = round(score, 5)
        doc.metadata["entropy_min"] = round(min(scores), 5)
        doc.metadata["entropy_windows"] = len(scores)
        if score > self.threshold:
            return True
        return False, "low_entropy"
