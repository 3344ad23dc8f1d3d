"""MinHash signatures and LSH band keys for near-duplicate detection (FineWeb's recipe: word 5-gram shingles of
the lower-cased text without punctuation, 14 bands of 8 hashes).

Shingles are hashed to 32 bits (xxh32); each of the ``bands * rows`` hash functions is ``(a * h + b) mod p`` with
p = 2^61 - 1 and seeded a, b < 2^31, so the products stay inside uint64. A band's key is the xxh64 of its ``rows``
minima: two documents whose Jaccard similarity is s share a band with probability ``1 - (1 - s^rows)^bands``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_PRIME = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64(0xFFFFFFFF)
_NON_WORD = re.compile(r"[^\w\s]+")


@dataclass(frozen=True)
class MinHashParams:
    ngram: int = 5
    """Words per shingle."""
    bands: int = 14
    """LSH bands (datatrove: buckets)."""
    rows: int = 8
    """Hashes per band."""
    seed: int = 1
    """Seed of the permutations."""


class MinHasher:
    def __init__(self, params: MinHashParams):
        self.params = params
        rng = np.random.default_rng(params.seed)
        n = params.bands * params.rows
        self._a = rng.integers(1, 1 << 31, size=n, dtype=np.uint64)
        self._b = rng.integers(0, 1 << 31, size=n, dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the distinct word n-grams, (S,) uint64; a text shorter than n words is one shingle."""
        import xxhash

        words = _NON_WORD.sub(" ", text.lower()).split()
        n = self.params.ngram
        grams = {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}
        hashes = (xxhash.xxh32_intdigest(g.encode("utf-8", "surrogatepass")) for g in grams)
        return np.fromiter(hashes, dtype=np.uint64, count=len(grams))

    def signature(self, text: str) -> np.ndarray:
        """(bands * rows,) uint64 minima of the permuted shingle hashes."""
        h = self.shingles(text)[:, None]  # (S, 1)
        permuted = (h * self._a + self._b) % _PRIME  # (S, K); a, h < 2^32 and b < 2^31 keep it below 2^64
        return (permuted & _MAX32).min(axis=0)

    def band_keys(self, text: str) -> np.ndarray:
        """(bands,) uint64: one key per band; equal keys make two documents candidates."""
        import xxhash

        sig = self.signature(text).reshape(self.params.bands, self.params.rows)
        return np.array([xxhash.xxh64_intdigest(row.tobytes()) for row in sig], dtype=np.uint64)


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for tests and reports)."""
    hasher = MinHasher(MinHashParams(ngram=ngram))
    sa, sb = set(hasher.shingles(a).tolist()), set(hasher.shingles(b).tolist())
    return len(sa & sb) / max(1, len(sa | sb))
