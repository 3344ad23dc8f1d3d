"""benchmarks/attention_candidates.py: each candidate kernel equals the one it would replace (and so the
eager reference, which tests/test_model.py holds the flex path to), on the operands `flex_operands` lays out."""

import pytest
import torch

from benchmarks.attention_candidates import document_attention_explicit, window_attention_banded
from r1_ds.model import hierarchical_attention as ha


def _operands(T, g, G, heads, seed):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(2, T, 64) for _ in range(3))
    return ha.flex_operands(q, k, v, level_heads=heads, paragraph_size=g, document_size=G, rope_theta=1e4)


@pytest.mark.parametrize("T, window, g", [(96, 8, 8), (96, 5, 8), (128, 16, 16)])
def test_banded_window_attention_equals_flex_l1(T, window, g):
    heads = (2, 4, 8)
    qr, kbuf, vbuf, _, _, S = _operands(T, g, 4 * g, heads, seed=0)
    H = heads[0]
    flex = ha._flex(ha.split_heads(qr, H), ha.split_heads(kbuf[:, S:], H), ha.split_heads(vbuf[:, S:], H),
                    ha._window_block_mask(T, window, g, "cpu"), (64 // H) ** -0.5)
    banded = window_attention_banded(qr, kbuf[:, S:], vbuf[:, S:], n_heads=H, window=window, block=g)
    torch.testing.assert_close(banded, flex, atol=2e-5, rtol=1e-4)


def test_banded_window_attention_refuses_a_window_wider_than_the_block():
    x = torch.zeros(1, 16, 8)
    with pytest.raises(ValueError, match="window=9 must be <= block=8"):
        window_attention_banded(x, x, x, n_heads=2, window=9, block=8)


@pytest.mark.parametrize("T", [96, 77])
def test_explicit_document_attention_equals_sdpa_l3(T):
    g, G, heads = 8, 32, (2, 4, 8)
    qr, _, _, k3, v3, _ = _operands(T, g, G, heads, seed=1)
    ref = ha._document_attention(qr, k3, v3, heads[2], G, T)
    out = document_attention_explicit(qr, k3, v3, n_heads=heads[2], document_size=G, length=T)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
