"""R1 as a DeepSpeed pipeline: the layout arithmetic, HF names of the pipe layers, and 2 stages on 2
gloo ranks giving the one-process loss and, after one optimizer step, the one-process weights."""

import pytest
import torch

from r1_ds.local_ranks import run_distributed
from r1_ds.model import R1Config, R1ForCausalLM
from r1_ds.model.modeling_r1 import set_drop_path_rate
from r1_ds.parallel.state_dict_mapping import pipe_layer_prefixes
from r1_ds.parallel.topology import LayoutError, ParallelDims

LR, CLIP, SEED = 0.5, 0.3, 0


def test_rank_layout_matches_deepspeed_topology():
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    dims = ParallelDims.build(24, pipe=3, tensor=2)
    assert (dims.pipe, dims.tensor, dims.data) == (3, 2, 4)
    topo = PipeModelDataParallelTopology(num_pp=3, num_mp=2, num_dp=4)
    for rank in range(24):
        c, ds = dims.coords(rank), topo.get_coord(rank)
        assert (c.pipe, c.data, c.tensor) == (ds.pipe, ds.data, ds.model)
        assert dims.rank(pipe=c.pipe, data=c.data, tensor=c.tensor) == rank


def test_layouts_that_do_not_fit_are_refused_with_numbers():
    with pytest.raises(LayoutError, match=r"pipe=2 x tensor=2 = 4 ranks per replica does not divide the world size 6"):
        ParallelDims.build(6, pipe=2, tensor=2)
    with pytest.raises(LayoutError, match=r"= 8 ranks does not match the world size 4"):
        ParallelDims.build(4, pipe=2, data=4)
    with pytest.raises(LayoutError, match=r"pipe=3 stages but the model has num_hidden_layers=2"):
        ParallelDims.build(3, pipe=3).check_model(num_hidden_layers=2, level_heads=[2, 4, 8])
    with pytest.raises(LayoutError, match=r"tensor=4 does not divide the 2 heads of attention level L1"):
        ParallelDims.build(4, tensor=4).check_model(num_hidden_layers=2, level_heads=[2, 4, 8])


def test_pipe_layer_prefixes_are_the_hf_names():
    for tied in (True, False):
        model = R1ForCausalLM(R1Config.from_preset("tiny", tie_word_embeddings=tied))
        modules = [model.model.embed_tokens, *model.model.layers, model.model.norm, model.lm_head]
        hf = model.state_dict()
        names = set()
        for prefix, module in zip(pipe_layer_prefixes(model.config), modules):
            if prefix is None:
                assert tied and module is model.lm_head
                continue
            for key, value in module.state_dict().items():
                assert hf[prefix + key] is not None and torch.equal(hf[prefix + key], value)
                names.add(prefix + key)
        assert names == set(hf) - ({"lm_head.weight"} if tied else set())


def test_pipeline_drop_path_rule_matches_the_model():
    model = R1ForCausalLM(R1Config.from_preset("tiny", num_hidden_layers=4))
    model.set_drop_path_rate(0.3)
    expected = [layer.drop_path.rate for layer in model.model.layers]
    set_drop_path_rate(model, 0.0, 4)
    set_drop_path_rate(model, 0.3, 4)
    assert [layer.drop_path.rate for layer in model.model.layers] == expected


def _batch():
    return torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(1))


def _pipeline_step(activation_checkpoint_interval: int):
    """One optimizer step of a 2-stage pipeline (2 micro-batches, SGD, clipping active)."""
    import deepspeed
    from deepspeed import comm as dist

    from r1_ds.parallel.deepspeed_patches import needs_fp32_clip_patch, patch_fp32_grad_clipping
    from r1_ds.parallel.pipeline import build_pipeline
    from r1_ds.parallel.state_dict_mapping import pipe_layer_prefixes

    torch.manual_seed(SEED)
    model = R1ForCausalLM(R1Config.from_preset("tiny"))
    module = build_pipeline(
        model,
        ParallelDims.build(dist.get_world_size(), pipe=2),
        activation_checkpoint_interval=activation_checkpoint_interval,
    )
    ds = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2,
        "gradient_clipping": CLIP,
        "optimizer": {"type": "SGD", "params": {"lr": LR}},
        "steps_per_print": 10**6,
    }
    engine, *_ = deepspeed.initialize(model=module, model_parameters=list(module.parameters()), config=ds)
    assert needs_fp32_clip_patch(engine)
    patch_fp32_grad_clipping(engine)
    ids = _batch()
    loss = engine.train_batch(iter([(ids[:2], ids[:2]), (ids[2:], ids[2:])]))
    prefixes = pipe_layer_prefixes(module.r1_config)
    params = {}
    for local, layer in enumerate(module.forward_funcs):
        prefix = prefixes[local + module._local_start]
        if prefix and hasattr(layer, "state_dict"):
            params.update({prefix + k: v.clone() for k, v in layer.state_dict().items()})
    tied = module.tied_modules["embed"].weight.detach().clone()
    return {
        "loss": float(loss),
        "grad_norm": engine.get_global_grad_norm(),
        "params": params,
        "tied": tied,
        "stage_layers": [type(f).__name__ for f in module.forward_funcs],
    }


def _pipeline_steps():
    """Without and with activation checkpointing (every decoder layer recomputed in backward)."""
    return [_pipeline_step(0), _pipeline_step(1)]


@pytest.mark.slow
def test_two_stage_pipeline_matches_one_process():
    per_rank = run_distributed(_pipeline_steps, 2)

    torch.manual_seed(SEED)
    ref = R1ForCausalLM(R1Config.from_preset("tiny"))
    opt = torch.optim.SGD(ref.parameters(), lr=LR)
    ids, loss = _batch(), 0.0
    for mb in (ids[:2], ids[2:]):
        micro = ref(input_ids=mb, labels=mb).loss / 2
        micro.backward()
        loss += micro.item()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), CLIP)
    assert norm > CLIP  # clipping is active, so a wrong global norm would show in the weights
    opt.step()

    expected = ref.state_dict()
    for variant in (0, 1):  # activation checkpointing off, on
        stages = [per_rank[0][variant], per_rank[1][variant]]
        assert stages[0]["stage_layers"][0] == "Embedding" and "R1RMSNorm" in stages[1]["stage_layers"]
        for s in stages:
            assert s["loss"] == pytest.approx(loss, abs=1e-6)
            assert s["grad_norm"] == pytest.approx(float(norm), rel=1e-5)
        got = {**stages[0]["params"], **stages[1]["params"]}
        assert set(got) == set(expected) - {"lm_head.weight"}
        for name, value in got.items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=f"{name} (variant {variant})")
        for s in stages:  # the tied embedding/head copy on each stage got the summed gradient
            torch.testing.assert_close(s["tied"], expected["model.embed_tokens.weight"], rtol=0, atol=1e-6)
