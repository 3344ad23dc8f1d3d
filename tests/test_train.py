"""The trainer on 2 gloo ranks: data-parallel replicas stay identical, resume equals the
uninterrupted run (data order, optimizer, LR, DropPath), progressive stages switch the batch inside
one job, checkpoints are atomic. The runs live in tests/train_runs.py and are shared with test_export.
`checkpoint.save` itself (crash mid-save, pruning, re-saving a step) runs in one process with a stub engine."""

import json
import os

import pytest
import torch

from tests import train_runs


@pytest.mark.slow
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


@pytest.mark.slow
def test_compiled_blocks_train_like_eager():
    eager, compiled = train_runs.data_parallel_eager_no_drop(), train_runs.data_parallel_compiled_no_drop()
    assert sorted(compiled["metrics"]) == [1, 2, 3]
    assert [r["compiled_blocks"] for r in compiled["ranks"]] == [2, 2]  # tiny: 2 decoder layers per replica
    assert all(r["compiled_frames"] >= 1 for r in compiled["ranks"])  # dynamo really built graphs
    assert [r["compiled_frames"] for r in eager["ranks"]] == [0, 0]
    for step in (1, 2, 3):  # inductor fuses and reorders fp32 arithmetic: equal up to rounding, not bitwise
        assert compiled["metrics"][step]["loss"] == pytest.approx(eager["metrics"][step]["loss"], rel=1e-5), step
    c0, c1 = (r["params"] for r in compiled["ranks"])
    for name, value in eager["ranks"][0]["params"].items():
        # Adam amplifies rounding in near-zero gradients: up to ~1e-5 seen, against ~1e-3 moved per step
        torch.testing.assert_close(c0[name], value, rtol=1e-4, atol=5e-5, msg=name)
        assert torch.equal(c0[name], c1[name]), name  # the compiled replicas stay identical to each other
    torch.testing.assert_close(compiled["ranks"][0]["logits"], eager["ranks"][0]["logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_blocks_in_a_pipeline_train_like_eager():
    eager, compiled = train_runs.data_parallel_eager_no_drop(), train_runs.pipeline_compiled_no_drop()
    for step in (1, 2, 3):  # data parallel 2 x micro 2 vs pipeline 2 stages x grad_accum 2: the same batches
        assert compiled["metrics"][step]["loss"] == pytest.approx(eager["metrics"][step]["loss"], rel=1e-5), step
        assert compiled["metrics"][step]["grad_accum"] == 2
    assert [r["compiled_blocks"] for r in compiled["ranks"]] == [1, 1]  # one decoder layer per stage
    assert all(r["compiled_frames"] >= 1 for r in compiled["ranks"])


@pytest.mark.slow
def test_compiled_blocks_keep_one_graph_while_drop_path_rises():
    """The DropPath rate changes every step and differs per layer; it must not recompile the blocks (past
    dynamo's limit they would run eager without an error)."""
    run = train_runs.data_parallel_compiled_drop_path()
    reference = train_runs.data_parallel_compiled_no_drop()
    assert run["metrics"][4]["drop_path"] > run["metrics"][2]["drop_path"] > 0
    for r, ref in zip(run["ranks"], reference["ranks"]):
        # at most one more graph than without DropPath: the switch from off to on
        assert 1 <= r["compiled_frames"] <= ref["compiled_frames"] + 1, (r["compiled_frames"], ref["compiled_frames"])
    for name, value in run["ranks"][0]["params"].items():
        assert torch.equal(value, run["ranks"][1]["params"][name]), name  # replicas drew the same masks


@pytest.mark.slow
def test_resume_equals_uninterrupted_run_data_parallel():
    full, resumed = train_runs.data_parallel(), train_runs.data_parallel_resumed()
    assert sorted(resumed["metrics"]) == [3, 4]
    for step in (3, 4):
        for key in ("loss", "lr", "grad_norm", "global_batch"):
            assert resumed["metrics"][step][key] == full["metrics"][step][key], (step, key)
    for name, value in full["ranks"][0]["params"].items():
        assert torch.equal(resumed["ranks"][0]["params"][name], value), name


@pytest.mark.slow
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
    assert torch.equal(
        run["ranks"][0]["params"]["model.embed_tokens.weight"], run["ranks"][1]["params"]["model.embed_tokens.weight"]
    )


@pytest.mark.slow
def test_resume_equals_uninterrupted_run_pipeline_across_a_stage_switch():
    full, resumed = train_runs.pipeline(), train_runs.pipeline_resumed()
    for step in (3, 4):
        for key in ("loss", "lr", "grad_norm", "global_batch"):
            assert resumed["metrics"][step][key] == full["metrics"][step][key], (step, key)
    for a, b in zip(full["ranks"], resumed["ranks"]):
        for name, value in a["params"].items():
            assert torch.equal(b["params"][name], value), name


@pytest.mark.slow
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


# ----------------------------------------------------------------------------- checkpoint.save, one process


class _StubEngine:
    """Stands in for a DeepSpeed engine: `save_checkpoint` writes one file into the tag folder it is given
    (the temp folder `save` passes), then raises when `crash` is set, like a rank killed mid-save."""

    def __init__(self, payload: bytes, crash: bool = False):
        self.payload, self.crash = payload, crash

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert not save_latest  # `latest` is written by r1_ds.checkpoint, after the rename
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        with open(os.path.join(save_dir, tag, "mp_rank_00_model_states.pt"), "wb") as f:
            f.write(self.payload)
        if self.crash:
            raise RuntimeError("killed mid-save")


@pytest.fixture
def one_rank(monkeypatch):
    """`checkpoint.save` on one process: rank 0, barriers that return at once."""
    import deepspeed.comm

    monkeypatch.setattr(deepspeed.comm, "get_rank", lambda: 0)
    monkeypatch.setattr(deepspeed.comm, "barrier", lambda *args, **kwargs: None)


def _payload(ckpt_dir, tag: str) -> bytes:
    with open(os.path.join(ckpt_dir, tag, "mp_rank_00_model_states.pt"), "rb") as f:
        return f.read()


def _save(ckpt_dir, step: int, payload: bytes, *, keep: int = 0, crash: bool = False) -> str:
    from r1_ds import checkpoint as ckpt

    return ckpt.save(_StubEngine(payload, crash), str(ckpt_dir), step, {}, keep=keep)


def test_a_crash_mid_save_leaves_the_previous_checkpoint_latest(tmp_path, one_rank):
    """A save that dies while writing: `latest` and the previous checkpoint are untouched, resume ignores
    the temp folder, and the next save removes it and moves `latest`."""
    from r1_ds import checkpoint as ckpt

    _save(tmp_path, 2, b"step2")
    with pytest.raises(RuntimeError, match="killed mid-save"):
        _save(tmp_path, 4, b"half-written", crash=True)
    assert ckpt.read_latest(str(tmp_path)) == "global_step2"
    assert _payload(tmp_path, "global_step2") == b"step2"
    assert _payload(tmp_path, ".tmp-global_step4") == b"half-written"  # the crash really left its files
    assert ckpt.list_tags(str(tmp_path)) == ["global_step2"]
    assert ckpt.find_resume(str(tmp_path), "auto") == (str(tmp_path), "global_step2")

    _save(tmp_path, 4, b"step4")
    assert sorted(os.listdir(tmp_path)) == ["global_step2", "global_step4", "latest"]  # no .tmp-* left
    assert ckpt.read_latest(str(tmp_path)) == "global_step4" and _payload(tmp_path, "global_step4") == b"step4"
    assert _payload(tmp_path, "global_step2") == b"step2"


def test_keep_prunes_only_older_tags_after_resuming_from_an_older_one(tmp_path, one_rank):
    """A run resumed from global_step2 of a folder that also holds global_step6 saves step 4 with keep=1:
    the new checkpoint stays and `latest` names it; the abandoned newer one is left alone."""
    from r1_ds import checkpoint as ckpt

    _save(tmp_path, 2, b"step2")
    _save(tmp_path, 6, b"step6")
    _save(tmp_path, 4, b"step4 resumed", keep=1)
    assert ckpt.list_tags(str(tmp_path)) == ["global_step4", "global_step6"]
    assert ckpt.find_resume(str(tmp_path), "auto") == (str(tmp_path), "global_step4")
    assert _payload(tmp_path, "global_step4") == b"step4 resumed"
    _save(tmp_path, 8, b"step8", keep=2)  # keep counts the new tag: one older one stays
    assert ckpt.list_tags(str(tmp_path)) == ["global_step6", "global_step8"]


def test_re_saving_a_step_keeps_the_old_folder_until_the_new_one_is_in_place(tmp_path, one_rank, monkeypatch):
    from r1_ds import checkpoint as ckpt

    _save(tmp_path, 4, b"first")
    _save(tmp_path, 4, b"second")
    assert sorted(os.listdir(tmp_path)) == ["global_step4", "latest"]
    assert _payload(tmp_path, "global_step4") == b"second"

    # a crash between moving the old folder aside and renaming the new one into place
    rename, calls = os.rename, []

    def rename_then_die(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("killed between the renames")
        rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename_then_die)
    with pytest.raises(OSError, match="between the renames"):
        _save(tmp_path, 4, b"third")
    monkeypatch.setattr(ckpt.os, "rename", rename)
    assert calls[0] == (str(tmp_path / "global_step4"), str(tmp_path / ".tmp-old-global_step4"))
    assert ckpt.read_latest(str(tmp_path)) == "global_step4" and not (tmp_path / "global_step4").exists()
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"latest names 'global_step4', which does not exist\. Fix: "
        r"rename .*\.tmp-old-global_step4",
    ):
        ckpt.find_resume(str(tmp_path), "auto")
    _save(tmp_path, 5, b"step5")  # the next save puts the old folder back, then saves
    assert _payload(tmp_path, "global_step4") == b"second"
    assert sorted(os.listdir(tmp_path)) == ["global_step4", "global_step5", "latest"]


def test_resume_from_a_checkpoint_folder_checks_its_latest(tmp_path):
    from r1_ds import checkpoint as ckpt

    (tmp_path / "global_step2").mkdir()
    ckpt.write_latest(str(tmp_path), "global_step2")
    assert ckpt.find_resume("unused", str(tmp_path)) == (str(tmp_path), "global_step2")
    ckpt.write_latest(str(tmp_path), "global_step9")
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"latest names 'global_step9', which does not exist\. Fix: "
        r"restore the folder, or write an existing tag",
    ):
        ckpt.find_resume("unused", str(tmp_path))
    ckpt.write_latest(str(tmp_path), "")
    with pytest.raises(ckpt.CheckpointError, match=r"latest is empty\. Fix:"):
        ckpt.find_resume("unused", str(tmp_path))
    with pytest.raises(ckpt.CheckpointError, match="neither a checkpoint folder"):
        ckpt.find_resume("unused", str(tmp_path / "no_such_checkpoint"))
