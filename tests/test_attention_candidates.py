"""benchmarks/attention_candidates.py: each candidate kernel equals the one it would replace (and so the
eager reference, which tests/test_model.py holds the flex path to), on the operands `_flex_inputs` lays out."""

import pytest
import torch

from benchmarks.attention_candidates import document_attention_explicit, window_attention_banded
from r1_ds.model import hierarchical_attention as ha


def _operands(T, d, g, G, heads, seed=0):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(2, T, d) for _ in range(3))
    n_par, n_doc = T // g, T // G
    S = ha.summary_len(n_par, g)
    r = ha.rope_size(d, heads)

    def grid(n, step):
        return ha._rope_grid(n, step, r, 1e4, "cpu")

    return ha._flex_inputs(q, k, v, *grid(T, 1), *grid(n_par, g), *grid(n_doc, G), n_par, S, n_doc, g, G), S


@pytest.mark.parametrize("T, window, g", [(96, 8, 8), (96, 5, 8), (128, 16, 16)])
def test_banded_window_attention_equals_flex_l1(T, window, g):
    heads = (2, 4, 8)
    (qr, kbuf, vbuf, _, _), S = _operands(T, 64, g, 4 * g, heads)
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
    Tp = -(-T // g) * g
    torch.manual_seed(1)
    q, k, v = (torch.nn.functional.pad(torch.randn(2, T, 64), (0, 0, 0, Tp - T)) for _ in range(3))
    n_par, n_doc = T // g, T // G
    r = ha.rope_size(64, heads)

    def grid(n, step):
        return ha._rope_grid(n, step, r, 1e4, "cpu")

    qr, _, _, k3, v3 = ha._flex_inputs(q, k, v, *grid(Tp, 1), *grid(n_par, g), *grid(n_doc, G), n_par,
                                       ha.summary_len(n_par, g), n_doc, g, G)
    ref = ha._document_attention(qr, k3, v3, heads[2], G, T)
    out = document_attention_explicit(qr, k3, v3, n_heads=heads[2], document_size=G, length=T)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
