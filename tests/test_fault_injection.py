"""Fault injection: a run is killed at fixed points of training, saving and export, then resumed; the
result must equal the uninterrupted run (every step's loss and the final weights, bit for bit) and no
finished checkpoint may be lost. Then every kind of checkpoint file is corrupted (truncated, garbage,
empty) and resume and export must name the file and the previous complete checkpoint.

A kill is simulated in the test process by raising `Killed` (a BaseException, so no `except Exception`
in the code under test can swallow it) from inside the code at that point; the files on disk are then
exactly what a SIGKILL at that instant leaves (everything is written through files, nothing is flushed
in a `finally`). tests/test_safety.py kills real processes with SIGKILL for the lock and the launcher.
All runs: tests/one_process.py (tiny model, world of one, 6 steps, checkpoint every 2, fixed seed).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from r1_ds import checkpoint as ckpt
from tests.one_process import TINY, losses, train_once

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Killed(BaseException):
    """The process dies here."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    train_once(out)
    return {"dir": str(out), "losses": losses(out), "weights": _weights(out, "global_step6")}


def _weights(out, tag: str) -> dict:
    return torch.load(os.path.join(str(out), "checkpoints", tag, "mp_rank_00_model_states.pt"), weights_only=True)[
        "module"
    ]


def _resume_and_compare(out, reference) -> None:
    """Resume the killed run; the whole run must equal the uninterrupted one and keep every checkpoint."""
    train_once(out)
    assert losses(out) == reference["losses"]
    for name, value in reference["weights"].items():
        assert torch.equal(_weights(out, "global_step6")[name], value), name
    assert ckpt.list_tags(os.path.join(str(out), "checkpoints")) == ["global_step2", "global_step4", "global_step6"]
    assert not glob.glob(os.path.join(str(out), "checkpoints", ".tmp-*"))


# ----------------------------------------------------------------------------- kills during training


@pytest.mark.parametrize("kill_step", [1, 3, 5])
def test_kill_mid_step_then_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch, reference, kill_step):
    """Killed halfway through the gradient accumulation of step `kill_step` (after its first micro-batch)."""
    import r1_ds.train as train_mod

    real = train_mod.train_step_data_parallel
    calls = []

    def step(engine, batches, gas):
        calls.append(1)
        if len(calls) == kill_step:

            def first_then_die():
                yield next(iter(batches))
                raise Killed(f"step {kill_step}")

            return real(engine, first_then_die(), gas)
        return real(engine, batches, gas)

    monkeypatch.setattr(train_mod, "train_step_data_parallel", step)
    with pytest.raises(Killed):
        train_once(tmp_path)
    monkeypatch.setattr(train_mod, "train_step_data_parallel", real)
    saved = (kill_step - 1) // 2 * 2
    assert ckpt.read_latest(str(tmp_path / "checkpoints")) == (f"global_step{saved}" if saved else None)
    _resume_and_compare(tmp_path, reference)


def test_sigkill_of_a_real_run_then_resume_equals_the_uninterrupted_run(tmp_path, reference):
    """The same as above with a real process and a real SIGKILL (at the start of step 5): what the in-process
    kills simulate is what a killed `python -m r1_ds.train` leaves."""
    args = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")] + ["--output-dir", str(tmp_path)]
    die_at_step_5 = (
        "import os, signal, sys, r1_ds.train as t; real = t.train_step_data_parallel; calls = []\n"
        "def step(*a):\n    calls.append(1)\n    if len(calls) == 5: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*a)\n"
        "t.train_step_data_parallel = step; sys.exit(t.main(sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONPATH": ROOT, "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # a world of its own
        env.pop(key, None)
    killed = subprocess.run(
        [sys.executable, "-c", die_at_step_5, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert ckpt.read_latest(str(tmp_path / "checkpoints")) == "global_step4"
    resumed = subprocess.run(
        [sys.executable, "-m", "r1_ds.train", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path) == reference["losses"]
    for name, value in reference["weights"].items():
        assert torch.equal(_weights(tmp_path, "global_step6")[name], value), name


# ----------------------------------------------------------------------------- kills during a save


def _kill_inside_deepspeed_write(monkeypatch):
    """DeepSpeed dies halfway through writing a file of the step-4 checkpoint (a truncated .pt in the temp folder)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    real = TorchCheckpointEngine.save

    def save(self, state_dict, path):
        if ".tmp-global_step4" in path:
            real(self, state_dict, path)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            raise Killed("mid-write")
        return real(self, state_dict, path)

    monkeypatch.setattr(TorchCheckpointEngine, "save", save)


def _kill_after_deepspeed_wrote(monkeypatch):
    """Every file of the step-4 checkpoint is in the temp folder; the rename never happens."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    real = DeepSpeedEngine.save_checkpoint

    def save_checkpoint(self, save_dir, tag=None, **kwargs):
        out = real(self, save_dir, tag=tag, **kwargs)
        if tag == ".tmp-global_step4":
            raise Killed("after the write")
        return out

    monkeypatch.setattr(DeepSpeedEngine, "save_checkpoint", save_checkpoint)


def _kill_before_latest(monkeypatch):
    """global_step4 is renamed into place; `latest` still names global_step2."""
    real = ckpt.write_latest

    def write_latest(save_dir, tag):
        if tag == "global_step4":
            raise Killed("before latest")
        return real(save_dir, tag)

    monkeypatch.setattr(ckpt, "write_latest", write_latest)


def _kill_while_writing_latest(monkeypatch):
    """`latest`'s temp file is half written when the process dies."""
    real = ckpt.atomic_write_text

    def atomic_write_text(path, text):
        if text == "global_step4":
            with open(os.path.join(os.path.dirname(path), ".tmp-latest.x"), "w") as f:
                f.write("global_st")
            raise Killed("writing latest")
        return real(path, text)

    monkeypatch.setattr(ckpt, "atomic_write_text", atomic_write_text)


SAVE_FAULTS = {
    "mid_deepspeed_write": (_kill_inside_deepspeed_write, "global_step2"),
    "after_deepspeed_write": (_kill_after_deepspeed_wrote, "global_step2"),
    "before_latest": (_kill_before_latest, "global_step2"),
    "while_writing_latest": (_kill_while_writing_latest, "global_step2"),
}


@pytest.mark.parametrize("fault", sorted(SAVE_FAULTS))
def test_kill_during_a_save_then_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch, reference, fault):
    install, latest_after = SAVE_FAULTS[fault]
    with monkeypatch.context() as m:
        install(m)
        with pytest.raises(Killed):
            train_once(tmp_path)
    assert ckpt.read_latest(str(tmp_path / "checkpoints")) == latest_after  # the previous one stays named
    _resume_and_compare(tmp_path, reference)


def test_missing_empty_or_garbage_latest_resumes_from_the_newest_complete_tag(tmp_path, reference, caplog):
    """Never a silent restart from step 0 over the run's own checkpoints."""
    ckpt_dir = tmp_path / "checkpoints"
    train_once(tmp_path, schedule__steps=4)
    for damage in ("missing", "empty", "garbage"):
        latest = ckpt_dir / "latest"
        latest.unlink(missing_ok=True)
        if damage != "missing":
            latest.write_bytes(b"" if damage == "empty" else b"\xff\xfe\x00junk")
        caplog.clear()
        assert ckpt.find_resume(str(ckpt_dir), "auto") == (str(ckpt_dir), "global_step4")
        assert "resuming from the newest complete checkpoint global_step4" in caplog.text
    (ckpt_dir / "latest").unlink()
    shutil.rmtree(ckpt_dir / "global_step4")  # and a tag folder whose save never completed is not resumed from
    (ckpt_dir / "global_step4").mkdir()
    assert ckpt.find_resume(str(ckpt_dir), "auto") == (str(ckpt_dir), "global_step2")
    train_once(tmp_path)  # continues from step 2 to 6: the same run as the uninterrupted one
    assert losses(tmp_path) == reference["losses"]


# ----------------------------------------------------------------------------- kills during an export


def test_a_killed_export_leaves_the_old_export_and_a_new_one_replaces_it_whole(tmp_path, monkeypatch, reference):
    from r1_ds.model import R1ForCausalLM

    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text('{"old": true}')
    (out / "tokenizer.json").write_text("{}")  # an old export's tokenizer: the run has none, so it must go
    real = R1ForCausalLM.save_pretrained

    def save_then_die(self, folder, **kwargs):
        open(os.path.join(folder, "config.json"), "w").close()  # the 0-byte config.json of a killed export
        raise Killed("export")

    monkeypatch.setattr(R1ForCausalLM, "save_pretrained", save_then_die)
    with pytest.raises(Killed):
        ckpt.export_hf(os.path.join(reference["dir"], "checkpoints"), str(out))
    assert (out / "config.json").read_text() == '{"old": true}'  # untouched
    # (the temp folder of a process killed for real stays beside it, hidden: .tmp-hf.*; here it is removed)
    monkeypatch.setattr(R1ForCausalLM, "save_pretrained", real)
    ckpt.export_hf(os.path.join(reference["dir"], "checkpoints"), str(out))
    assert os.path.getsize(out / "config.json") > 0 and not (out / "tokenizer.json").exists()
    assert not glob.glob(str(tmp_path / ".tmp-*"))


# ----------------------------------------------------------------------------- corrupt files


@pytest.fixture(scope="module")
def zero1_run(tmp_path_factory):
    """A bf16 ZeRO-1 run: mp_rank_00_model_states.pt plus a bf16_zero_*_optim_states.pt shard."""
    import json

    base = tmp_path_factory.mktemp("zero1")
    ds = json.load(open("ds_configs/tiny_cpu.json"))
    ds.update(zero_optimization={"stage": 1}, bf16={"enabled": True})
    with open(base / "ds.json", "w") as f:
        json.dump(ds, f)
    train_once(base / "run", deepspeed_config=str(base / "ds.json"), schedule__steps=4)
    return base


CORRUPTIONS = {"truncated": lambda b: b[: len(b) // 3], "garbage": lambda b: os.urandom(len(b)), "empty": lambda b: b""}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@pytest.mark.parametrize("pattern", ["mp_rank_00_model_states.pt", "*_optim_states.pt"])
def test_a_corrupt_checkpoint_file_is_named_with_the_previous_complete_tag(tmp_path, zero1_run, pattern, corruption):
    run = tmp_path / "run"
    shutil.copytree(zero1_run / "run", run)
    (path,) = glob.glob(str(run / "checkpoints" / "global_step4" / pattern))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(CORRUPTIONS[corruption](data))
    previous = str(run / "checkpoints" / "global_step2")
    for attempt in ("resume", "export"):
        with pytest.raises(ckpt.CheckpointError) as err:
            if attempt == "resume":
                train_once(run, deepspeed_config=str(zero1_run / "ds.json"), schedule__steps=6)
            else:
                ckpt.export_hf(str(run / "checkpoints"), str(tmp_path / "hf"))
        message = str(err.value)
        assert path in message and f"The previous complete checkpoint is {previous}" in message, (attempt, message)
    assert not (tmp_path / "hf").exists()
    if corruption != "truncated":
        return
    # the fix the message gives works: resume from the previous tag
    train_once(
        tmp_path / "resumed",
        deepspeed_config=str(zero1_run / "ds.json"),
        schedule__steps=4,
        checkpoint__resume=previous,
    )
    assert sorted(losses(tmp_path / "resumed")) == [3, 4]
    assert losses(tmp_path / "resumed") == {s: v for s, v in losses(zero1_run / "run").items() if s > 2}
