"""The trainer on 2 gloo ranks: data-parallel replicas stay identical, resume equals the
uninterrupted run (data order, optimizer, LR, DropPath), progressive stages switch the batch inside
one job, checkpoints are atomic. The runs live in tests/train_runs.py and are shared with test_export."""

import json
import os
import shutil

import pytest
import torch

from tests import train_runs

pytestmark = pytest.mark.slow


def test_data_parallel_replicas_stay_identical():
    run = train_runs.data_parallel()
    r0, r1 = run["ranks"]
    assert r0["optimizer_steps"] == r1["optimizer_steps"] == 4
    assert r0["params"].keys() == r1["params"].keys()
    for name in r0["params"]:
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    # and the run really trained: the weights moved, the loss is finite and logged each step
    assert sorted(run["metrics"]) == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in run["metrics"].values())
    assert run["metrics"][4]["drop_path"] > 0  # DropPath was on, so resume below also checks its RNG


def test_resume_equals_uninterrupted_run_data_parallel():
    full, resumed = train_runs.data_parallel(), train_runs.data_parallel_resumed()
    assert sorted(resumed["metrics"]) == [3, 4]
    for step in (3, 4):
        for key in ("loss", "lr", "grad_norm", "global_batch"):
            assert resumed["metrics"][step][key] == full["metrics"][step][key], (step, key)
    for name, value in full["ranks"][0]["params"].items():
        assert torch.equal(resumed["ranks"][0]["params"][name], value), name


def test_pipeline_progressive_stages_switch_batch_without_restart():
    run = train_runs.pipeline()
    m = run["metrics"]
    assert [m[s]["global_batch"] for s in (1, 2, 3, 4)] == [4, 4, 8, 8]
    assert [m[s]["grad_accum"] for s in (1, 2, 3, 4)] == [2, 2, 4, 4]  # micro 2, data 1
    assert [m[s]["stage"] for s in (1, 2, 3, 4)] == [1, 1, 2, 2]
    assert all(r["optimizer_steps"] == 4 for r in run["ranks"])  # one optimizer, one step count
    # the two stages hold complementary layers; the tied embedding lives on both, kept equal
    names = [set(r["params"]) for r in run["ranks"]]
    assert not (names[0] & names[1]) - {"model.embed_tokens.weight"}
    assert torch.equal(run["ranks"][0]["params"]["model.embed_tokens.weight"],
                       run["ranks"][1]["params"]["model.embed_tokens.weight"])


def test_resume_equals_uninterrupted_run_pipeline_across_a_stage_switch():
    full, resumed = train_runs.pipeline(), train_runs.pipeline_resumed()
    for step in (3, 4):
        for key in ("loss", "lr", "grad_norm", "global_batch"):
            assert resumed["metrics"][step][key] == full["metrics"][step][key], (step, key)
    for a, b in zip(full["ranks"], resumed["ranks"]):
        for name, value in a["params"].items():
            assert torch.equal(b["params"][name], value), name


def test_checkpoints_are_complete_and_latest_is_atomic():
    run = train_runs.data_parallel()
    ckpt = os.path.join(run["dir"], "checkpoints")
    assert sorted(d for d in os.listdir(ckpt)) == ["global_step2", "global_step4", "latest"]  # no .tmp-* left
    assert open(os.path.join(ckpt, "latest")).read() == "global_step4"
    state = torch.load(os.path.join(ckpt, "global_step4", "mp_rank_00_model_states.pt"), weights_only=False)
    # for ds_to_universal: the tensor-parallel pattern lists even at tensor 1 (a universal checkpoint can then
    # resume tensor parallel), and the layout, which a resume checks
    info = state["universal_checkpoint_info"]
    assert info["universal_checkpoint_version"] >= 0.2 and info["parameter_with_row_parallelism_patterns"]
    assert state["r1_layout"] == {"pipe": 1, "tensor": 1, "data": 2}
    assert state["r1_sampler"]["step"] == 4 and state["r1_model_config"]["hidden_size"] == 64
    saved = json.load(open(os.path.join(run["dir"], "ds_config.json")))
    assert saved["train_batch_size"] == 4 and saved["gradient_accumulation_steps"] == 1


def test_a_crash_mid_save_leaves_the_previous_checkpoint_latest(tmp_path):
    """Simulate a save killed before its rename: the temp folder is ignored by resume and removed
    by the next save; `latest` still names the complete checkpoint."""
    from r1_ds import checkpoint as ckpt

    src = os.path.join(train_runs.data_parallel()["dir"], "checkpoints", "global_step2")
    shutil.copytree(src, tmp_path / "global_step2")
    ckpt.write_latest(str(tmp_path), "global_step2")
    (tmp_path / ".tmp-global_step4").mkdir()  # half-written
    (tmp_path / ".tmp-global_step4" / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    assert ckpt.find_resume(str(tmp_path), "auto") == (str(tmp_path), "global_step2")
    assert ckpt.list_tags(str(tmp_path)) == ["global_step2"]
    with pytest.raises(ckpt.CheckpointError, match="neither a checkpoint folder"):
        ckpt.find_resume(str(tmp_path), str(tmp_path / "no_such_checkpoint"))
