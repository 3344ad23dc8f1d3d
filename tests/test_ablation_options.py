"""The ablation options of R1Config (attention_levels, level_gate) change the computation as documented."""

import pytest
import torch
import torch.nn.functional as F

from r1_ds.model import R1Config, R1ConfigError, R1ForCausalLM
from tests.tiny_r1 import eager_tiny as _model
from tests.tiny_r1 import logits as _logits
from tests.tiny_r1 import token_ids as _ids


def test_window_only_is_the_l1_path():
    """attention_levels=[1]: o_proj(h1 * (1 + alpha_1)) with alpha_1 from [h1; 0; 0], computed by hand."""
    model = _model(attention_levels=[1])
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 64, model.config.hidden_size)
    with torch.no_grad():
        h1, h2, h3 = attn.levels(x)
        assert h2.abs().sum() > 0 and h3.abs().sum() > 0  # the removed levels exist; the gate must ignore them
        zero = torch.zeros_like(h1)
        logit = F.linear(torch.cat([h1, zero, zero], -1), attn.gate.weight, attn.gate.bias)[..., :1]
        expected = attn.o_proj(h1 * (1 + torch.sigmoid(logit)))
        torch.testing.assert_close(attn(x), expected)


def test_removed_levels_do_not_reach_the_output():
    """Window only: the paragraph and document settings (L2, L3) change nothing; with every level they do."""
    ids = _ids()
    base = _logits(_model(attention_levels=[1]), ids)
    other = _logits(_model(attention_levels=[1], paragraph_size=4, document_size=16, route_top_k=0), ids)
    torch.testing.assert_close(base, other)
    full = _logits(_model(), ids)
    full_other = _logits(_model(paragraph_size=4, document_size=16, route_top_k=0), ids)
    assert (full - full_other).abs().max() > 1e-4
    assert (full - base).abs().max() > 1e-4  # the same weights, the levels removed: another function


def test_removed_level_passes_no_gradient():
    """L2 removed: routing (L2 only) changes nothing, and the gate's L2 columns get a zero gradient."""
    ids = _ids()
    model = _model(attention_levels=[1, 3])
    torch.testing.assert_close(_logits(model, ids), _logits(_model(attention_levels=[1, 3], route_top_k=0), ids))
    model.train()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    d = model.config.hidden_size
    for layer in model.model.layers:
        g = layer.self_attn.gate.weight.grad
        assert g[:3, d : 2 * d].abs().max() == 0  # L2's columns
        assert g[:3, :d].abs().max() > 0 and g[:3, 2 * d :].abs().max() > 0  # kept levels learn


def test_fixed_gate_weighs_levels_equally():
    """level_gate=False: o_proj(1.5 h1 + 0.5 h2 + 0.5 h3); the gate's weights have no effect."""
    model = _model(level_gate=False)
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 64, model.config.hidden_size)
    with torch.no_grad():
        h1, h2, h3 = attn.levels(x)
        torch.testing.assert_close(attn(x), attn.o_proj(1.5 * h1 + 0.5 * h2 + 0.5 * h3))
        attn.gate.weight.normal_()
        attn.gate.bias.normal_()
        torch.testing.assert_close(attn(x), attn.o_proj(1.5 * h1 + 0.5 * h2 + 0.5 * h3))
    learned = _model(level_gate=True).model.layers[0].self_attn
    with torch.no_grad():
        assert (learned(x) - learned.o_proj(1.5 * h1 + 0.5 * h2 + 0.5 * h3)).abs().max() > 1e-4


def test_options_round_trip(tmp_path):
    model = _model(attention_levels=[1, 3], level_gate=False)
    model.save_pretrained(tmp_path)
    loaded = R1ForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.attention_levels == [1, 3] and loaded.config.level_gate is False
    ids = _ids()
    torch.testing.assert_close(_logits(loaded.eval(), ids), _logits(model, ids))


@pytest.mark.parametrize("levels", [[], [0], [4], [2, 1], [1, 1], ["1"]])
def test_bad_attention_levels(levels):
    with pytest.raises(R1ConfigError, match=r"attention_levels=.*sorted list of distinct levels.*Fix: use e\.g\."):
        R1Config.from_preset("tiny", attention_levels=levels)


def test_bad_level_gate():
    with pytest.raises(R1ConfigError, match=r"level_gate='yes': must be true or false.*Fix"):
        R1Config.from_preset("tiny", level_gate="yes")
