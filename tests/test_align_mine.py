"""MINE on correlated Gaussians with known mutual information, and the pair weights derived from estimates."""

from __future__ import annotations

import math

import pytest
import torch

from r1_ds.align import MineEstimator, pair_weights
from r1_ds.align.mine import correlated_gaussians, gaussian_mi, rho_for_mi


@pytest.mark.parametrize("d, mi", [(1, 0.5), (1, 2.0), (2, 1.0), (2, 2.0)])
def test_mine_reads_the_mutual_information_of_correlated_gaussians_within_10_percent(d, mi):
    rho = rho_for_mi(d, mi)
    assert gaussian_mi(d, rho) == pytest.approx(mi)
    gen = torch.Generator().manual_seed(d * 10 + int(mi * 10))
    est = MineEstimator(d, d, hidden=64, lr=2e-3, seed=0)
    for _ in range(1500):
        est.update(*correlated_gaussians(256, d, rho, generator=gen))
    value = est.estimate(*correlated_gaussians(20_000, d, rho, generator=gen))
    assert abs(value - mi) <= 0.1 * mi, (value, mi)


def test_independent_variables_read_near_zero_and_state_round_trips():
    gen = torch.Generator().manual_seed(5)
    est = MineEstimator(2, 2, hidden=32, seed=1)
    for _ in range(300):
        est.update(torch.randn(256, 2, generator=gen), torch.randn(256, 2, generator=gen))
    x, y = torch.randn(20_000, 2, generator=gen), torch.randn(20_000, 2, generator=gen)
    assert abs(est.estimate(x, y)) < 0.05
    twin = MineEstimator(2, 2, hidden=32, seed=99)
    twin.load_state_dict(est.state_dict())
    a, b = torch.randn(64, 2, generator=gen), torch.randn(64, 2, generator=gen)
    assert twin.update(a, b) == est.update(a, b)  # same critic, optimiser and moving average: same step


def test_pair_weights_favour_the_least_aligned_pair_within_bounds():
    w = pair_weights({"image-text": 0.2, "image-code": 1.0, "text-code": 3.0})
    assert w["image-text"] > w["image-code"] > w["text-code"]
    assert all(0.5 <= v <= 2.0 for v in w.values())
    assert w["text-code"] == 0.5  # clipped
    equal = pair_weights({"a": 1.3, "b": 1.3, "c": 1.3})
    assert all(v == pytest.approx(1.0) for v in equal.values())
    unknown = pair_weights({"a": None, "b": 1.0, "c": math.nan})
    assert all(v == pytest.approx(1.0) for v in unknown.values())  # missing estimates count as the mean
    soft = pair_weights({"a": 0.0, "b": 1.0}, temperature=100.0)
    assert soft["a"] == pytest.approx(1.0, abs=0.01)  # a high temperature flattens the weights
