"""Export round trip: a DeepSpeed checkpoint (pipeline or not) -> Hugging Face folder -> the same
logits as the trained engine; loadable with trust_remote_code in a fresh process."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import r1_ds.model  # noqa: F401  (registers the R1 classes with Auto*)
from r1_ds.cli import main as cli_main
from tests import train_runs
from tests.train_probe import probe_ids

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _export(run, tmp_path) -> str:
    out = str(tmp_path / "hf")
    assert cli_main(["export", os.path.join(run["dir"], "checkpoints"), out]) == 0
    return out


def _logits(folder: str) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=probe_ids()).logits


def test_export_data_parallel_checkpoint_gives_the_trained_logits(tmp_path):
    run = train_runs.data_parallel()
    out = _export(run, tmp_path)
    assert {"config.json", "model.safetensors"} <= set(os.listdir(out))
    assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "r1_ds"
    torch.testing.assert_close(_logits(out), run["ranks"][0]["logits"], rtol=0, atol=1e-5)
    from transformers import AutoTokenizer  # the run read packed shards with a tokenizer: it travels along

    assert AutoTokenizer.from_pretrained(out)("t5 t7").input_ids == [5, 7]


def test_export_pipeline_checkpoint_gives_the_trained_logits_and_loads_remotely(tmp_path):
    run = train_runs.pipeline()
    out = _export(run, tmp_path)
    trained = run["ranks"][1]["logits"]  # the last stage computes the logits
    torch.testing.assert_close(_logits(out), trained, rtol=0, atol=1e-5)
    # a process that never imported r1_ds: the model code travels in the folder
    code = (
        "import sys, torch; from transformers import AutoModelForCausalLM; "
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval(); "
        "assert 'r1_ds' not in sys.modules or not hasattr(sys.modules['r1_ds'], 'R1ForCausalLM'); "
        "ids = torch.load(sys.argv[2]); torch.save(m(input_ids=ids).logits.detach(), sys.argv[3])"
    )
    torch.save(probe_ids(), tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-c", code, out, str(tmp_path / "ids.pt"), str(tmp_path / "remote.pt")],
        check=True,
        cwd=str(tmp_path),
        env=env,
        timeout=120,
    )
    torch.testing.assert_close(torch.load(tmp_path / "remote.pt"), trained, rtol=0, atol=1e-5)


def test_export_of_a_non_checkpoint_is_a_readable_error(tmp_path, caplog):
    assert cli_main(["export", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "is not a DeepSpeed checkpoint" in caplog.text and "Fix:" in caplog.text
