"""Entropy exactly as the issue defines it: H(p)/ln N over 64-word windows, tail < 32 merged."""

import math

import pytest

from data_prep.filters.entropy import EntropyFilter, entropy_windows, normalized_entropy, text_entropy_scores
from tests.data_prep.helpers import doc


def test_known_values():
    assert normalized_entropy([f"w{i}" for i in range(64)]) == pytest.approx(1.0)
    assert normalized_entropy(["spam"] * 64) == pytest.approx(0.0)
    # two words, 32 each: H = ln 2, so H / ln 64 = 1/6
    assert normalized_entropy(["a"] * 32 + ["b"] * 32) == pytest.approx(math.log(2) / math.log(64))
    # 3:1 split over N = 4: H = -(0.75 ln 0.75 + 0.25 ln 0.25)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert normalized_entropy(["x", "x", "x", "y"]) == pytest.approx(h / math.log(4))


def test_windows_and_tail_merge():
    toks = [str(i) for i in range(100)]
    assert [len(w) for w in entropy_windows(toks)] == [64, 36]  # tail of 36 >= 32 stays its own window
    toks = [str(i) for i in range(90)]
    assert [len(w) for w in entropy_windows(toks)] == [90]  # tail of 26 < 32 merged into the previous window
    toks = [str(i) for i in range(150)]
    assert [len(w) for w in entropy_windows(toks)] == [64, 86]
    assert entropy_windows([str(i) for i in range(31)]) == []  # too short to score
    assert [len(w) for w in entropy_windows([str(i) for i in range(40)])] == [40]


def test_tokens_are_lowercased_words():
    # "The the THE" is one word three times; punctuation is not a token
    text = " ".join(["The, the; THE!"] * 11)  # 33 tokens of one word
    assert text_entropy_scores(text) == [pytest.approx(0.0)]


def test_filter_keeps_prose_and_drops_junk(prose):
    f = EntropyFilter()
    d = doc(prose[0])
    assert f.filter(d) is True
    assert d.metadata["entropy"] > 0.8
    spam = doc(" ".join(["buy cheap watches now best price"] * 30))
    assert f.filter(spam) == (False, "low_entropy")
    numbers = doc("\n".join(f"item {i % 7} price {i % 5}" for i in range(60)))
    assert f.filter(numbers) == (False, "low_entropy")
    short = doc("too short to score")
    assert f.filter(short) is True and short.metadata["entropy"] is None


def test_min_aggregate_is_stricter(prose):
    # ~45 windows of real prose: the mean is above 0.8, but some windows (grammar rules, lists) are below it
    text = " ".join(prose)
    scores = text_entropy_scores(text)
    assert sum(scores) / len(scores) > 0.8 > min(scores)
    assert EntropyFilter(aggregate="mean").filter(doc(text)) is True
    assert EntropyFilter(aggregate="min").filter(doc(text)) == (False, "low_entropy")
