"""The decoding state kept beside the KV cache (group summaries and rotated keys, group_summaries.py) gives what
the reference gives at every step, across paragraph and document edges, and is rebuilt when the cache changes
under it; padded batches whose rows share a length give what each row gives alone."""

import pytest
import torch

from r1_ds.model import R1Config, R1ForCausalLM
from r1_ds.model import hierarchical_attention as ha
from r1_ds.model.group_summaries import layer_summaries


def _model(impl="eager", seed=0):
    torch.manual_seed(seed)
    m = R1ForCausalLM(R1Config.from_preset("tiny", initializer_range=0.2)).eval()  # tiny: g 8, G 32, window 16
    m.set_attn_implementation(impl)
    return m


def _cache(out):
    return out.past_key_values if getattr(out, "past_key_values", None) is not None else out.cache


@pytest.mark.parametrize("impl", ["eager", "flex_attention"])
def test_every_decoding_step_equals_the_full_forward(impl):
    """5 prompt tokens, then 70 steps: the history crosses paragraph edges (8, 16, ...), document edges (32, 64) and
    the rotated-key buffer's growth (256 rows: not reached; the first step fills it whole)."""
    m = _model(impl)
    ids = torch.randint(1, 512, (2, 75), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(ids, use_cache=False).logits
        out = m(ids[:, :5], use_cache=True)
        cache, state = _cache(out), None
        for t in range(5, 75):
            out = m(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            torch.testing.assert_close(out.logits[:, 0], full[:, t], atol=1e-5, rtol=1e-5, msg=f"step at {t}")
            s = layer_summaries(cache, 0)
            if state is not None:  # kept from step to step: the buffer is written in place, not rebuilt
                assert s._k_rot is state
            state = s._k_rot
            assert s.summaries.kbar.shape[1] == (t + 1) // 8 and s.summaries.k3.shape[1] == (t + 1) // 32


def test_a_reordered_or_cropped_cache_rebuilds_the_state():
    """Beam search reorders the cache's rows and assisted decoding crops it: the state made beside the old tensors
    must not be extended (it would describe other rows or tokens)."""
    m = _model()
    ids = torch.randint(1, 512, (2, 50), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = _cache(m(ids[:, :20], use_cache=True))
        for t in range(20, 40):
            cache = _cache(m(ids[:, t : t + 1], past_key_values=cache, use_cache=True))
        cache.reorder_cache(torch.tensor([1, 0]))
        swapped = ids[[1, 0]]
        out = m(swapped[:, 40:41], past_key_values=cache, use_cache=True)
        full = m(swapped[:, :41], use_cache=False).logits[:, -1]
        torch.testing.assert_close(out.logits[:, 0], full, atol=1e-5, rtol=1e-5)
        cache.crop(33 - cache.get_seq_length())  # back to 33 tokens, across a paragraph edge
        out = m(ids[[1, 0]][:, 33:34], past_key_values=cache, use_cache=True)
        torch.testing.assert_close(
            out.logits[:, 0], m(swapped[:, :34], use_cache=False).logits[:, -1], atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("T, Tq", [(8, 1), (33, 1), (64, 1), (97, 1), (130, 3)])
def test_decode_with_kept_state_equals_the_reference(T, Tq):
    """hierarchical_attention_decode given the summaries and rotated keys (as the model keeps them) equals the
    eager reference, as it does computing them itself."""
    c = R1Config.from_preset("tiny")
    kw = dict(
        level_heads=tuple(c.level_heads),
        window=c.local_window,
        paragraph_size=c.paragraph_size,
        document_size=c.document_size,
        top_k=c.route_top_k,
        rope_theta=c.rope_theta,
    )
    torch.manual_seed(T)
    q, k, v = (torch.randn(2, T, c.hidden_size) for _ in range(3))
    summaries = ha.pooled_summaries(q, k, v, paragraph_size=c.paragraph_size, document_size=c.document_size)
    k_rot = torch.cat([ha.rotate_keys(k[:, :5], 0, **_rot(kw)), ha.rotate_keys(k[:, 5:], 5, **_rot(kw))], 1)
    ref = ha.hierarchical_attention_eager(q[:, T - Tq :], k, v, q, range(T - Tq, T), **kw)
    out = ha.hierarchical_attention_decode(q[:, T - Tq :], k, v, q, summaries=summaries, k_rot=k_rot, **kw)
    for level, (a, b) in enumerate(zip(out, ref), start=1):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=f"L{level}")


def _rot(kw):
    return dict(level_heads=kw["level_heads"], rope_theta=kw["rope_theta"])


@pytest.mark.parametrize("impl", ["eager", "flex_attention"])
def test_padded_rows_of_one_length_decode_together_as_each_alone(impl):
    """Rows 0 and 1 have one length (one attention call), row 2 is shorter (left-padded): greedy generation of each
    row equals the row alone, and logits agree."""
    m = _model(impl, seed=3)
    g = torch.Generator().manual_seed(4)
    rows = [torch.randint(1, 512, (30,), generator=g), torch.randint(1, 512, (30,), generator=g)]
    rows.append(torch.randint(1, 512, (13,), generator=g))
    ids = torch.zeros(3, 30, dtype=torch.long)
    mask = torch.zeros(3, 30, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, 30 - len(r) :], mask[i, 30 - len(r) :] = r, 1
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        batch = m.generate(ids, attention_mask=mask, output_logits=True, return_dict_in_generate=True, **kw)
        for i, r in enumerate(rows):
            alone = m.generate(r[None], output_logits=True, return_dict_in_generate=True, **kw)
            assert torch.equal(batch.sequences[i, 30:], alone.sequences[0, len(r) :]), f"row {i}"
            for a, b in zip(batch.logits, alone.logits):
                torch.testing.assert_close(a[i], b[0], atol=1e-5, rtol=1e-5)


def test_the_decoding_step_traces_as_one_graph(monkeypatch):
    """On GPU the step is compiled (dynamic shapes): a graph break would split it into many, and a shape guard
    that fails every step would recompile every step. Traced here by dynamo alone (no code generation), across a
    paragraph edge (48), the step must be one graph, compiled a few times at most, and compute the same."""
    from torch._dynamo.testing import CompileCounter

    import r1_ds.model.modeling_r1 as modeling

    m = _model()
    ids = torch.randint(1, 512, (2, 52), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cache = _cache(m(ids[:, :40], use_cache=True))
        plain = [m(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(40, 52)]
        counter = CompileCounter()
        torch._dynamo.reset()
        traced = torch.compile(ha.hierarchical_attention_decode, backend=counter, fullgraph=True, dynamic=None)
        monkeypatch.setattr(modeling, "_attention_decode", traced)
        cache = _cache(m(ids[:, :40], use_cache=True))
        for t, ref in zip(range(40, 52), plain):
            out = m(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits
            torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    assert 1 <= counter.frame_count <= 4, f"{counter.frame_count} compilations for 12 steps"


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_decoding_steps_at_paragraphs_of_128_equal_the_full_forward(device):
    """125m geometry (paragraphs of 128, documents of 1024, window 128), 2 layers: 4 prompt lengths around the
    edges, 3 steps each, against the uncached eager forward. On a GPU the step is the compiled graph, and prompt
    lengths change in one process (dynamic shapes)."""
    torch.manual_seed(0)
    config = R1Config.from_preset(
        "125m", num_hidden_layers=2, vocab_size=512, hidden_size=256, intermediate_size=512, level_heads=(2, 4, 8)
    )
    m = R1ForCausalLM(config).to(device).eval()
    ids = torch.randint(1, 512, (2, 1100), generator=torch.Generator().manual_seed(6)).to(device)
    with torch.no_grad():
        full = m(ids, use_cache=False).logits
        for n in (126, 255, 640, 1021):
            cache = _cache(m(ids[:, :n], use_cache=True))
            for t in range(n, n + 3):
                out = m(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits[:, 0]
                err = ((out - full[:, t]).norm() / full[:, t].norm()).item()
                assert err < (1e-5 if device == "cpu" else 1e-3), f"prompt {n}, step at {t}: relative error {err}"
