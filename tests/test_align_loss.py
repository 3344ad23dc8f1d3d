"""info_nce against the formula, its cross-entropy form, symmetry and masking; R@k; the heads' save/load round trip.
The 2-rank gathered gradient is tested in test_align_train.py, in the same spawned ranks as the ZeRO-1 run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from r1_ds.align import AlignHeads, AlignHeadsConfig, info_nce, recall_at_k


def reference(a, b, tau):
    """-1/N sum_i log( exp(a_i.b_i / tau) / sum_j exp(a_i.b_j / tau) ), written out term by term."""
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        num = math.exp(float(a[i] @ b[i]) / tau)
        den = sum(math.exp(float(a[i] @ b[j]) / tau) for j in range(n))
        total += -math.log(num / den)
    return total / n


def features(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1), F.normalize(torch.randn(n, d, generator=g), dim=1)


def test_info_nce_equals_the_formula_and_its_cross_entropy_form():
    a, b = features()
    tau = 0.2
    one_way = info_nce(a, b, 1 / tau, symmetric=False)
    assert float(one_way) == pytest.approx(reference(a, b, tau), rel=1e-5)
    ce = F.cross_entropy(a @ b.T / tau, torch.arange(6))
    assert float(one_way) == pytest.approx(float(ce), rel=1e-6)
    both = info_nce(a, b, 1 / tau)
    assert float(both) == pytest.approx((reference(a, b, tau) + reference(b, a, tau)) / 2, rel=1e-5)


def test_info_nce_is_symmetric_only_where_asked():
    a, b = features(seed=1)
    assert float(info_nce(a, b, 5.0)) == pytest.approx(float(info_nce(b, a, 5.0)), rel=1e-6)
    assert float(info_nce(a, b, 5.0, symmetric=False)) != pytest.approx(
        float(info_nce(b, a, 5.0, symmetric=False)), rel=1e-3
    )


def test_rows_missing_a_modality_are_neither_queries_nor_negatives():
    a, b = features(n=7, seed=2)
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    garbage_a, garbage_b = a.clone(), b.clone()
    garbage_a[~mask] = 100.0  # whatever a missing row holds must not matter
    garbage_b[~mask] = -100.0
    masked = info_nce(garbage_a, garbage_b, 5.0, mask=mask)
    assert float(masked) == pytest.approx(float(info_nce(a[mask], b[mask], 5.0)), rel=1e-6)
    empty = info_nce(a.requires_grad_(), b, 5.0, mask=torch.zeros(7, dtype=torch.bool))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_recall_at_k_counts_ties_against_the_match():
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.1, 0.2, 0.3]])
    assert recall_at_k(sim, 1) == pytest.approx(2 / 3)  # row 1: candidate 0 scores higher
    assert recall_at_k(sim, 2) == pytest.approx(1.0)
    assert recall_at_k(torch.ones(4, 4), 1) == 0.0  # constant scores never count as retrieved
    with pytest.raises(ValueError, match="square"):
        recall_at_k(torch.ones(2, 3), 1)


def test_heads_save_and_load_with_their_temperatures_and_image_statistics(tmp_path):
    cfg = AlignHeadsConfig(hidden_size=16, image_dim=12, proj_dim=8, image_hidden=0, init_temperature=0.05)
    heads = AlignHeads(cfg)
    assert float(heads.logit_scale(0)) == pytest.approx(20.0, rel=1e-5)
    heads.set_image_stats(torch.randn(10, 12))
    with torch.no_grad():
        heads.log_scale.fill_(10.0)  # beyond the bound: the scale stays at 1 / min_temperature
    assert float(heads.logit_scale(2)) == pytest.approx(1 / cfg.min_temperature)
    heads.save_pretrained(tmp_path)
    again = AlignHeads.from_pretrained(tmp_path)
    x = torch.randn(3, 12)
    assert torch.allclose(heads.project("image", x), again.project("image", x))
    assert torch.equal(heads.log_scale, again.log_scale)


def test_model_side_alignment_code_does_not_import_deepspeed():
    import subprocess
    import sys

    code = (
        "import sys; import r1_ds.align.loss, r1_ds.align.mine, r1_ds.align.heads, r1_ds.align.model, "
        "r1_ds.align.retrieval, r1_ds.align.data; from r1_ds.align import info_nce, MineEstimator; "
        "print('deepspeed' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
