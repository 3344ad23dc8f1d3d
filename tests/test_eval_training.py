"""Held-out loss during training: the engine's plain cross entropy equals `r1-ds eval perplexity`'s on
the exported weights (pipeline run on 2 gloo ranks), and the data-parallel branch equals heldout_loss."""

import types

import pytest
import torch

from r1_ds.config import ConfigError, load_train_config
from r1_ds.data import PackedShards
from r1_ds.evaluation.during_training import engine_heldout_loss
from r1_ds.evaluation.perplexity import heldout_loss


def test_data_parallel_branch_is_the_plain_held_out_loss(tmp_path):
    from r1_ds.model import R1Config, R1ForCausalLM
    from tests.test_eval_cli import _shards

    torch.manual_seed(0)
    model = R1ForCausalLM(R1Config.from_preset("tiny", vocab_size=128)).train()
    ds = PackedShards(_shards(str(tmp_path / "s"), vocab=128, rows=9, seq_len=32))
    engine = types.SimpleNamespace(module=model, device=torch.device("cpu"), train_micro_batch_size_per_gpu=lambda: 2)
    got = engine_heldout_loss(engine, ds, seq_len=32, sequences=9, pipeline=False)  # 4 whole micro-batches
    assert model.training  # restored
    assert got == pytest.approx(heldout_loss(model, ds, max_sequences=8)["loss"], rel=1e-6)


def test_eval_every_needs_held_out_data_and_a_logging_step():
    with pytest.raises(ConfigError, match="log.eval_data"):
        load_train_config(None, {"log.eval_every": 2})
    with pytest.raises(ConfigError, match="multiple of log.every=2"):
        load_train_config(None, {"log.eval_every": 3, "log.every": 2, "log.eval_data": "x"})


@pytest.mark.slow
def test_pipeline_run_logs_the_held_out_loss_of_its_weights(tmp_path):
    from r1_ds.cli import main as cli_main
    from tests import train_runs

    data = train_runs.packed_data()
    run = train_runs._run(
        "pp_heldout",
        {
            "parallel.pipe": 2,
            "data.path": data,
            "schedule.global_batch": 4,
            "log.eval_every": 2,
            "log.eval_data": data,
            "log.eval_sequences": 8,
        },
    )
    steps = sorted(run["metrics"])
    logged = {s: run["metrics"][s].get("heldout_loss") for s in steps}
    assert all((v is not None) == (s % 2 == 0 or s == steps[-1]) for s, v in logged.items()), logged
    out = str(tmp_path / "hf")
    assert cli_main(["export", f"{run['dir']}/checkpoints", out]) == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ref = heldout_loss(model, PackedShards(data), max_sequences=8, batch_size=2)["loss"]
    assert logged[steps[-1]] == pytest.approx(ref, rel=1e-5)
