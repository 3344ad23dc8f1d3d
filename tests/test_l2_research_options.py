"""R1Config's L2 research options (l2_routing="token", l2_projections="separate"): the eager reference computes
them as documented, the defaults are untouched, and every path that does not compute them refuses them."""

import math

import pytest
import torch
from transformers import DynamicCache

from r1_ds.model import R1Config, R1ConfigError, R1ForCausalLM
from r1_ds.model.hierarchical_attention import (
    hierarchical_attention_eager,
    pool_groups,
    rope_grid,
    rope_size,
    rotary,
    route_tokens,
)
from r1_ds.parallel.tensor_parallel import _check_config
from r1_ds.parallel.topology import TensorParallelError
from tests.tiny_r1 import eager_tiny as _model
from tests.tiny_r1 import logits as _logits
from tests.tiny_r1 import token_ids as _ids


def _route_tokens_by_loop(q, k, q_pos, n_heads, g, top_k):
    """route_tokens one query and head at a time, written from its docstring."""
    B, T, d = k.shape
    hd, n_par = d // n_heads, T // g
    out = torch.zeros(B, n_heads, len(q_pos), n_par, dtype=torch.bool)
    for b in range(B):
        for h in range(n_heads):
            sl = slice(h * hd, (h + 1) * hd)
            for i, t in enumerate(q_pos.tolist()):
                cands = list(range(t // g))
                if not cands or top_k == 0:
                    continue
                means = [k[b, j * g : (j + 1) * g, sl].double().mean(0) for j in cands]
                scores = torch.stack([q[b, i, sl].double() @ m for m in means]) / math.sqrt(hd)
                p = torch.softmax(scores, 0)
                entropy = -(p * p.log()).sum().item()
                n = min(max(1, math.ceil(math.exp(entropy))), top_k, len(cands))
                for j in p.argsort(descending=True)[:n].tolist():
                    out[b, h, i, cands[j]] = True
    return out


@pytest.mark.parametrize("top_k", [1, 3, 8])
def test_route_tokens_equals_a_loop_over_tokens(top_k):
    g, H = 8, 4
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(2, 75, 32, generator=gen)  # 9 complete paragraphs and a partial one
    q_pos = torch.arange(5, 75, 3)
    q = torch.randn(2, len(q_pos), 32, generator=gen)
    got = route_tokens(q, k, q_pos, n_heads=H, paragraph_size=g, top_k=top_k)
    assert got.shape == (2, H, len(q_pos), 9)
    assert torch.equal(got, _route_tokens_by_loop(q, k, q_pos, H, g, top_k))
    assert not got[..., (q_pos < g).nonzero().flatten(), :].any()  # the first paragraph has nothing to route to
    assert got.sum(-1).max() <= top_k


@pytest.mark.parametrize("routing", ["token", "summary"])
def test_per_token_routing_is_causal(routing):
    """A token's output does not depend on any later token: routing uses only its own query."""
    model = _model(l2_routing=routing)
    ids = _ids()
    later = ids.clone()
    later[:, 60:] = (later[:, 60:] + 7) % 512
    a, b = _logits(model, ids), _logits(model, later)
    torch.testing.assert_close(a[:, :60], b[:, :60])
    assert (a[:, 60:] - b[:, 60:]).abs().max() > 1e-4


def test_token_routing_changes_l2_only_and_trains():
    ids = _ids()
    paragraph, token = _model(), _model(l2_routing="token")
    assert token.state_dict().keys() == paragraph.state_dict().keys()  # same weights, another routing
    x = torch.randn(2, 96, 64)
    with torch.no_grad():
        p_levels = paragraph.model.layers[1].self_attn.levels(x)
        t_levels = token.model.layers[1].self_attn.levels(x)
    torch.testing.assert_close(p_levels[0], t_levels[0])
    torch.testing.assert_close(p_levels[2], t_levels[2])
    assert (p_levels[1] - t_levels[1]).abs().max() > 1e-4
    token.train()
    token(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in token.parameters() if p.requires_grad)


def test_summary_routing_reads_every_earlier_summary_and_routes_by_their_scores():
    """l2_routing="summary": with nothing routed (top_k=0) L2 is the null key and every earlier paragraph's summary,
    which is token routing's L2 when its summary span covers the whole sequence; with routing on, the two pick
    differently (trained attention scores against a dot product of means)."""
    ids = _ids()
    wide = dict(document_size=128, max_position_embeddings=128)  # span = 16 paragraphs: all of a 96-token row
    summary, token = (
        _model(l2_routing="summary", route_top_k=0, **wide),
        _model(l2_routing="token", route_top_k=0, **wide),
    )
    torch.testing.assert_close(_logits(summary, ids), _logits(token, ids))
    narrow = _model(l2_routing="summary", route_top_k=0)  # tiny's span is 4 paragraphs: summary mode sees more
    assert (_logits(narrow, ids) - _logits(_model(l2_routing="token", route_top_k=0), ids)).abs().max() > 1e-4
    routed_s, routed_t = _model(l2_routing="summary", **wide), _model(l2_routing="token", **wide)
    assert (_logits(routed_s, ids) - _logits(routed_t, ids)).abs().max() > 1e-4
    routed_s.train()
    routed_s(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in routed_s.parameters() if p.grad is not None)


def test_separate_projections_equal_the_shared_model_when_they_copy_it():
    """L2's own q/k/v set to the shared ones give the shared model's output: the only change is where L2 reads."""
    for routing in ("paragraph", "token", "summary"):
        shared = _model(l2_routing=routing)
        separate = _model(l2_routing=routing, l2_projections="separate")
        missing, unexpected = separate.load_state_dict(shared.state_dict(), strict=False)
        assert not unexpected and missing and all(".l2_" in name for name in missing)
        for layer in separate.model.layers:
            layer.self_attn.copy_shared_into_l2()
        torch.testing.assert_close(_logits(separate, _ids()), _logits(shared, _ids()))


def test_separate_projections_feed_l2_alone():
    model = _model(l2_projections="separate")
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 96, 64)
    with torch.no_grad():
        before = attn.levels(x)
        attn.l2_k_proj.weight.mul_(-0.5)
        attn.l2_v_proj.weight.mul_(2.0)
        after = attn.levels(x)
    torch.testing.assert_close(before[0], after[0])
    torch.testing.assert_close(before[2], after[2])
    assert (before[1] - after[1]).abs().max() > 1e-4
    model.train()
    ids = _ids()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    for layer in model.model.layers:
        for name in ("l2_q_proj", "l2_k_proj", "l2_v_proj"):
            assert getattr(layer.self_attn, name).weight.grad.abs().sum() > 0


def test_separate_projections_save_and_load(tmp_path):
    model = _model(l2_projections="separate", l2_routing="token")
    model.save_pretrained(tmp_path)
    loaded = R1ForCausalLM.from_pretrained(tmp_path).eval()
    loaded.set_attn_implementation("eager")
    assert loaded.config.l2_projections == "separate" and loaded.config.l2_routing == "token"
    torch.testing.assert_close(_logits(loaded, _ids()), _logits(model, _ids()))


@pytest.mark.parametrize("option", [{"l2_routing": "token"}, {"l2_routing": "summary"}, {"l2_projections": "separate"}])
def test_paths_that_do_not_compute_the_options_refuse_them(option):
    model = _model(**option)
    ids = _ids(48)
    model.set_attn_implementation("flex_attention")
    with pytest.raises(NotImplementedError, match="attn_implementation='flex_attention'.*Fix: model.set_attn"):
        _logits(model, ids)
    model.set_attn_implementation("eager")
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)  # a whole prompt: the reference, no refusal
        with pytest.raises(NotImplementedError, match="decoding with a KV cache"):
            model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding: rows computed one sequence at a time
    with pytest.raises(NotImplementedError, match="padded or packed rows"), torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    with pytest.raises(TensorParallelError, match="tensor=1"):
        _check_config(model.config, 2)
    _check_config(_model().config, 2)  # the defaults shard as before


def test_unknown_values_are_refused_with_the_fix():
    with pytest.raises(R1ConfigError, match=r"l2_routing='tokens'.*Fix: use 'paragraph'"):
        R1Config.from_preset("tiny", l2_routing="tokens")
    with pytest.raises(R1ConfigError, match=r"l2_projections='own'.*Fix: use 'shared'"):
        R1Config.from_preset("tiny", l2_projections="own")


def test_pool_groups_is_the_mean_route_tokens_reads():
    """route_tokens' paragraph keys are plain means of g tokens (the loop above assumes it)."""
    k = torch.randn(1, 20, 8)
    torch.testing.assert_close(pool_groups(k, 8)[0, 1], k[0, 8:16].mean(0))


@pytest.mark.parametrize("routing", ["paragraph", "token", "summary"])
def test_l2_with_its_own_projections_reads_and_routes_by_them_alone(routing):
    """With l2_projections="separate", the shared q/k/v (L1's and L3's) can change freely and L2's output does not
    move: L2's keys, values and routing all come from its own projections."""
    model = _model(l2_routing=routing, l2_projections="separate")
    attn = model.model.layers[1].self_attn
    x = torch.randn(2, 96, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = attn.levels(x)
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(attn, name).weight.copy_(torch.randn_like(getattr(attn, name).weight) * 0.3)
        after = attn.levels(x)
    torch.testing.assert_close(before[1], after[1])
    assert (before[0] - after[0]).abs().max() > 1e-4 and (before[2] - after[2]).abs().max() > 1e-4


def test_summary_routing_equals_a_loop_over_tokens():
    """L2 under l2_routing="summary", one query and head at a time in float64: keys are the null key, the rotated
    summaries of every complete paragraph before the query's, and the tokens of the paragraphs its own softmax
    over those summaries routes to (entropy rule, top-k)."""
    B, T, d, g, top_k = 1, 40, 16, 4, 3
    heads = (2, 4, 8)
    H, hd = heads[1], d // heads[1]
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, T, d, generator=gen) for _ in range(3))
    kw = dict(level_heads=heads, window=4, paragraph_size=g, document_size=16, top_k=top_k, rope_theta=10000.0)
    h2 = hierarchical_attention_eager(q, k, v, q, range(T), l2_routing="summary", **kw)[1]
    r, n_par = rope_size(d, heads), T // g
    cos, sin = rope_grid(T, 1, r, 10000.0, "cpu")
    qr, kr = rotary(q, cos, sin).double(), rotary(k, cos, sin).double()
    ks = rotary(pool_groups(k, g), *rope_grid(n_par, g, r, 10000.0, "cpu")).double()
    vs, vd = pool_groups(v, g).double(), v.double()
    want = torch.zeros(B, T, d, dtype=torch.float64)
    for t in range(T):
        for h in range(H):
            sl = slice(h * hd, (h + 1) * hd)
            qv = qr[0, t, sl]
            cands = list(range(t // g))
            keys, values = [torch.zeros(hd, dtype=torch.float64)], [torch.zeros(hd, dtype=torch.float64)]
            keys += [ks[0, j, sl] for j in cands]
            values += [vs[0, j, sl] for j in cands]
            if cands:
                p = torch.softmax(torch.stack([qv @ ks[0, j, sl] for j in cands]) / math.sqrt(hd), 0)
                n = min(max(1, math.ceil(math.exp(-(p * p.log()).sum().item()))), top_k, len(cands))
                for j in sorted(cands[i] for i in p.argsort(descending=True)[:n].tolist()):
                    keys += [kr[0, i, sl] for i in range(j * g, (j + 1) * g)]
                    values += [vd[0, i, sl] for i in range(j * g, (j + 1) * g)]
            w = torch.softmax(torch.stack([qv @ key for key in keys]) / math.sqrt(hd), 0)
            want[0, t, sl] = sum(wi * val for wi, val in zip(w, values))
    torch.testing.assert_close(h2.double(), want, atol=1e-5, rtol=1e-5)
