"""Word and line helpers shared by the heuristic text filters (pure Python, no spaCy)."""

from __future__ import annotations

import itertools
import operator
import re
from collections import Counter

# Punctuation-only tokens do not count as words (Gopher "non-symbol words").
PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«»“”‘’„…–—·•¡¿")
ALPHA_RE = re.compile(r"[^\W\d_]")
# Sentence ends for counting sentences (datatrove uses a spaCy/NLTK splitter; a regex is close for English).
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?。！？])\s+")


def split_words(text: str) -> list[str]:
    """Whitespace tokens, as in the Gopher paper (datatrove splits with a blank spaCy pipeline instead)."""
    return text.split()


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, characters in repeated items), counting every occurrence after the first."""
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items, dup_chars


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    """All word n-grams as tuples (built by zip, in C; str hashes are cached, so hashing tuples is cheap)."""
    return list(zip(*(words[i:] for i in range(n))))


def top_ngram_chars(words: list[str], n: int, prefix: list[int], limit: float = -1.0) -> int:
    """Characters covered by the most frequent n-gram: len(' '.join(ngram)) * count (datatrove's rule).

    When the cheap bound (top count x longest n-gram) is at most ``limit``, returns that bound instead of the exact
    value: both are then under the limit, which is all the filter needs.
    """
    if len(words) < n:
        return 0
    counts = Counter(zip(*(words[i:] for i in range(n))))
    top = max(counts.values())
    bound = top * (max(map(operator.sub, prefix[n:], prefix[:-n])) + n - 1)
    if bound <= limit:
        return bound
    ((gram, count),) = counts.most_common(1)
    return (sum(map(len, gram)) + n - 1) * count


def duplicated_ngram_chars(grams: list[tuple[str, ...]], prefix: list[int], n: int) -> int:
    """Characters in n-grams that repeat an earlier n-gram; a match skips ahead n words (datatrove's rule).

    Characters are counted as in datatrove: the n-gram's words joined without spaces. ``prefix[i]`` is the total
    length of the first i words. This is the reference scan (a Python loop); the filter calls it only when the
    C-level bound below cannot decide.
    """
    seen: set[tuple[str, ...]] = set()
    repeated = i = 0
    last = len(grams)
    while i < last:
        gram = grams[i]
        if gram in seen:
            repeated += prefix[i + n] - prefix[i]
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated


def first_occurrence(grams: list[tuple[str, ...]]) -> dict[tuple[str, ...], int]:
    """n-gram -> index of its first occurrence (dict built in C; later keys overwrite, so iterate backwards)."""
    return dict(zip(reversed(grams), range(len(grams) - 1, -1, -1)))


def repeated_coverage_chars(words: list[str], grams: list[tuple[str, ...]], first: dict, n0: int) -> int:
    """Characters of the words covered by some non-first occurrence of an ``n0``-gram.

    An upper bound of ``duplicated_ngram_chars`` for every n >= n0: the scan counts disjoint windows (it skips n
    words after a hit), each is a non-first occurrence of an n-gram, and every n-gram occurrence that repeats is
    covered by repeating n0-grams. One bound for all n, computed with C-level iterators.
    """
    covered = bytearray(len(words))
    ones = b"\x01" * n0
    for i in itertools.compress(itertools.count(), map(operator.ne, map(first.__getitem__, grams), itertools.count())):
        covered[i : i + n0] = ones
    return sum(itertools.compress(map(len, words), covered))
