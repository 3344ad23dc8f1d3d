"""Safety of checkpoints, runs and settings: no code runs from a checkpoint, resume honours or refuses
changed settings, one run per folder, ranks end with their launcher, divergence stops the run, the
DeepSpeed JSON is checked against DeepSpeed's own parser, and user errors are one readable message.
Training runs: tests/one_process.py (tiny model, world of one)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from r1_ds import checkpoint as ckpt
from r1_ds.cli import main as cli_main
from r1_ds.config import ConfigError
from tests.one_process import losses, lrs, train_once

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_LOCK = os.path.join(ROOT, "r1_ds", "run_lock.py")


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("four")
    train_once(out, schedule__steps=4)
    return out


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    os.remove(os.path.join(dst, "run.lock"))  # a copy of a folder, not of a run
    return dst


# ----------------------------------------------------------------------------- no code from a checkpoint


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant_payload(run_dir, marker) -> str:
    path = os.path.join(str(run_dir), "checkpoints", "global_step4", "mp_rank_00_model_states.pt")
    state = torch.load(path, weights_only=True)
    state["r1_layout"] = _Payload(marker)  # read by every resume and export
    torch.save(state, path)
    return path


def test_a_checkpoint_with_a_payload_is_refused_by_export_and_resume(tmp_path, four_steps, caplog):
    run = _copy_run(four_steps, tmp_path / "run")
    marker = str(tmp_path / "PAYLOAD_RAN")
    path = _plant_payload(run, marker)
    assert cli_main(["export", str(run / "checkpoints"), str(tmp_path / "hf")]) == 2
    assert f"{path} holds Python objects outside the allowlist" in caplog.text and "posix.system" in caplog.text
    assert "--trust-checkpoint" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match="outside the allowlist.*trust-checkpoint"):
        train_once(run, schedule__steps=6)
    assert not os.path.exists(marker) and not (tmp_path / "hf").exists()


def test_deepspeeds_own_loader_reads_weights_only_inside_the_guard(tmp_path):
    """engine.load_checkpoint reads through the checkpoint engine's torch.load(weights_only=False): the guard
    turns it into a weights-only load, so a payload that got past the file check still does not run."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from r1_ds.parallel.deepspeed_patches import weights_only_loads
    from r1_ds.safe_load import UnsafeFileError

    marker = str(tmp_path / "PAYLOAD_RAN")
    torch.save({"module": None, "x": _Payload(marker)}, tmp_path / "bad.pt")
    with weights_only_loads(), pytest.raises(UnsafeFileError, match="posix.system"):
        TorchCheckpointEngine().load(str(tmp_path / "bad.pt"), map_location="cpu")
    assert not os.path.exists(marker)
    assert torch.load(tmp_path / "bad.pt", weights_only=False) is not None  # outside the guard: unchanged
    assert os.path.exists(marker)  # (this is what the guard prevents)


# ----------------------------------------------------------------------------- resume with changed settings


def test_resume_with_more_steps_and_another_lr_rebuilds_the_schedule(tmp_path, four_steps):
    fresh = tmp_path / "fresh6"
    train_once(fresh, schedule__steps=6)
    run = _copy_run(four_steps, tmp_path / "run")
    train_once(run, schedule__steps=6, schedule__lr=2e-3)  # tiny_cpu.json's lr is 1e-3
    assert sorted(losses(run)) == [1, 2, 3, 4, 5, 6]  # the finished run was extended
    for step in (5, 6):  # the new cosine over 6 steps, at twice the peak lr: not the old floor
        assert lrs(run)[step] == pytest.approx(2 * lrs(fresh)[step], rel=1e-12), step
    assert lrs(run)[5] > 2e-3 * 0.1 * 1.5


def test_resume_refuses_another_model_or_precision(tmp_path, four_steps):
    run = _copy_run(four_steps, tmp_path / "run")
    with pytest.raises(ckpt.CheckpointError, match=r"holds another model \(num_hidden_layers 2 -> 3\)"):
        train_once(run, schedule__steps=6, model__overrides={"vocab_size": 256, "num_hidden_layers": 3})
    with pytest.raises(ckpt.CheckpointError, match="was trained in fp32 and this run is bf16.*precision.dtype=fp32"):
        train_once(run, schedule__steps=6, precision__dtype="bf16")
    assert sorted(losses(run)) == [1, 2, 3, 4]  # nothing trained


# ----------------------------------------------------------------------------- divergence


def test_a_diverging_run_stops_before_saving_and_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    import r1_ds.train as train_mod

    real = train_mod.train_step_data_parallel
    calls = []

    def poison_at_step_3(engine, batches, gas):
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(engine.module.parameters()).fill_(float("nan"))
        return real(engine, batches, gas)

    monkeypatch.setattr(train_mod, "train_step_data_parallel", poison_at_step_3)
    with pytest.raises(train_mod.DivergenceError) as err:
        train_once(tmp_path, log__check_finite_every=2)
    ckpt_dir = tmp_path / "checkpoints"
    assert "not finite at step 3" in str(err.value) and f"{ckpt_dir / 'global_step2'}" in str(err.value)
    assert ckpt.list_tags(str(ckpt_dir)) == ["global_step2"] and ckpt.read_latest(str(ckpt_dir)) == "global_step2"
    ckpt.export_hf(str(ckpt_dir), str(tmp_path / "hf"))  # the good one exports


def test_export_refuses_nan_weights(tmp_path, four_steps):
    run = _copy_run(four_steps, tmp_path / "run")
    path = run / "checkpoints" / "global_step4" / "mp_rank_00_model_states.pt"
    state = torch.load(path, weights_only=True)
    name = next(iter(state["module"]))
    state["module"][name].fill_(float("nan"))
    torch.save(state, path)
    with pytest.raises(
        ckpt.CheckpointError, match=f"NaN or Inf.*{name}.*previous complete checkpoint is .*global_step2"
    ):
        ckpt.export_hf(str(run / "checkpoints"), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


# ----------------------------------------------------------------------------- the DeepSpeed JSON


def _ds_json(tmp_path, **changes) -> str:
    ds = json.load(open(os.path.join(ROOT, "ds_configs", "tiny_cpu.json")))
    ds.update(changes)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    return str(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"gradient_cliping": 1.0}, "unknown top-level key 'gradient_cliping'.*Did you mean 'gradient_clipping'"),
        (
            {"zero_optimisation": {"stage": 1}},
            "unknown top-level key 'zero_optimisation'.*Did you mean 'zero_optimization'",
        ),
        (
            {"zero_optimization": {"stage": 1, "offload_optimizer": {"devce": "cpu"}}},
            "'zero_optimization.offload_optimizer.devce'.*Did you mean 'device'",
        ),
        (
            {"fp16": {"enabled": False, "initial_scale_pwr": 8}},
            "'fp16.initial_scale_pwr'.*Did you mean 'initial_scale_power'",
        ),
        ({"optimizer": {"type": "AdamW", "parms": {"lr": 1e-3}}}, "'optimizer.parms'.*Did you mean 'params'"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": -1e-3}}}, r"optimizer.params.lr=-0.001 must be a number > 0"),
    ],
)
def test_deepspeed_json_typos_and_a_negative_lr_are_refused(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        train_once(tmp_path / "run", deepspeed_config=_ds_json(tmp_path, **changes))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_user_error_ends_the_command_with_exit_code_2_and_one_line(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "r1_ds.train",
            "--deepspeed_config",
            _ds_json(tmp_path, zero_optimization={"stage": 0, "overlap_com": True}),
            "--output-dir",
            str(tmp_path / "run"),
            "--no-progress",
        ],
        env={**env, "PYTHONPATH": ROOT, "DS_ACCELERATOR": "cpu"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "unknown key 'zero_optimization.overlap_com'" in errors[0] and "Did you mean 'overlap_comm'" in errors[0]


def test_every_shipped_deepspeed_json_passes_the_key_check():
    from r1_ds.ds_schema import check_deepspeed_keys

    for name in sorted(os.listdir(os.path.join(ROOT, "ds_configs"))):
        if name.endswith(".json"):
            check_deepspeed_keys(json.load(open(os.path.join(ROOT, "ds_configs", name))), name)


# ----------------------------------------------------------------------------- folders, disk, lock


def test_output_folder_that_is_a_file_or_read_only_is_refused_at_start_up(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ckpt.CheckpointError, match="output folder .*file is a file"):
        train_once(tmp_path / "file")
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (a read-only folder cannot be made for root)")
    try:
        with pytest.raises(ckpt.CheckpointError, match="output folder .*ro is not writable"):
            train_once(ro)
        with pytest.raises(ckpt.CheckpointError, match="checkpoint folder .*ro/ckpt.* is not writable"):
            train_once(tmp_path / "run", checkpoint__dir=str(ro / "ckpt"))
        assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step, not at a save
    finally:
        subprocess.run(["chattr", "-i", str(ro)], check=True)


def test_export_never_replaces_a_folder_that_is_not_a_model(tmp_path, four_steps):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ckpt.CheckpointError, match=r"notes exists and is not a model folder .*\['todo.txt'\]"):
        ckpt.export_hf(str(four_steps / "checkpoints"), str(tmp_path / "notes"))
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_negative_seq_len_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data.seq_len \(--seq-len\)=-5: must be an integer >= 2"):
        train_once(tmp_path, data__seq_len=-5)


class _FullDiskEngine:
    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        os.makedirs(os.path.join(save_dir, tag))
        with open(os.path.join(save_dir, tag, "mp_rank_00_model_states.pt"), "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_a_save_removes_the_partial_folder_and_keeps_latest(tmp_path, monkeypatch):
    import deepspeed.comm

    monkeypatch.setattr(deepspeed.comm, "get_rank", lambda: 0)
    monkeypatch.setattr(deepspeed.comm, "barrier", lambda *a, **k: None)
    (tmp_path / "global_step2").mkdir()
    (tmp_path / "global_step2" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    ckpt.write_latest(str(tmp_path), "global_step2")
    with pytest.raises(ckpt.CheckpointError, match=r"step 4 .*No space left on device.*global_step2 stays"):
        ckpt.save(_FullDiskEngine(), str(tmp_path), 4, {})
    assert sorted(os.listdir(tmp_path)) == ["global_step2", "latest"]
    assert ckpt.find_resume(str(tmp_path), "auto") == (str(tmp_path), "global_step2")


# loads r1_ds/run_lock.py by path: no torch or transformers import, so these small processes start in a moment
PRELUDE = (
    "import importlib.util, sys, time; spec = importlib.util.spec_from_file_location('run_lock', "
    f"{RUN_LOCK!r}); run_lock = importlib.util.module_from_spec(spec); spec.loader.exec_module(run_lock); "
)


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PRELUDE + code], stdout=subprocess.PIPE, text=True)


def test_one_run_per_output_folder_and_a_killed_runs_lock_is_taken_over(tmp_path, caplog):
    from r1_ds.run_lock import RunLockError

    holder = _python(f"run_lock.RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockError, match=f"in use by another run \\(pid {holder.pid} on host"):
            train_once(tmp_path)
        assert not (tmp_path / "metrics.jsonl").exists()
        with pytest.raises(RunLockError, match=f"in use by another run \\(pid {holder.pid}"):
            train_once(tmp_path / "other", checkpoint__dir=str(tmp_path))  # the held folder as checkpoint.dir
        assert not (tmp_path / "other" / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train_once(tmp_path, schedule__steps=2)  # the dead run's lock is stale: taken over, with a log line
    assert f"from run pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    assert sorted(losses(tmp_path)) == [1, 2]


@pytest.mark.parametrize("kill", ["runner", "direct parent"])
def test_a_rank_exits_when_its_launcher_is_killed(tmp_path, kill):
    """runner ('deepspeed') -> launch ('deepspeed.launcher.launch') -> rank; SIGKILL the runner (the launch
    process lives on, orphaned) or the direct parent; the rank's watchdog ends it either way."""
    pid_file = tmp_path / "rank.pid"
    rank = (
        "run_lock.exit_with_launcher(interval_s=0.2); "
        f"open({str(pid_file)!r}, 'w').write(str(__import__('os').getpid())); time.sleep(60)"
    )
    # the chain, built explicitly: runner (argv names deepspeed) -> launch (argv names launch) -> rank
    launch_code = (
        "import subprocess, sys, time, os; subprocess.Popen([sys.executable, '-c', sys.argv[1]], "
        "env={**os.environ, 'LOCAL_RANK': '0'}); time.sleep(60)"
    )
    runner_code = (
        "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', sys.argv[1], "
        "sys.argv[2], 'deepspeed.launcher.launch']); print(p.pid, flush=True); time.sleep(60)"
    )
    runner = subprocess.Popen(
        [sys.executable, "-c", runner_code, launch_code, PRELUDE + rank, "deepspeed"], stdout=subprocess.PIPE, text=True
    )
    launch_pid = int(runner.stdout.readline())
    deadline = time.time() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline, "the rank did not start"
        time.sleep(0.1)
    rank_pid = int(pid_file.read_text())
    victim = runner.pid if kill == "runner" else launch_pid
    os.kill(victim, signal.SIGKILL)
    if kill == "runner":
        runner.wait()
    try:
        deadline = time.time() + 10
        while _alive(rank_pid):
            assert time.time() < deadline, f"rank {rank_pid} still runs after its launcher {victim} was killed"
            time.sleep(0.1)
    finally:
        for pid in (rank_pid, launch_pid, runner.pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        runner.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


# ----------------------------------------------------------------------------- generate and plot


def test_generate_refuses_an_empty_prompt_and_a_folder_that_is_not_a_model(tmp_path, caplog):
    (tmp_path / "config.json").write_text("{}")
    assert cli_main(["generate", str(tmp_path), "--prompt", ""]) == 2
    assert "--prompt is empty" in caplog.text
    assert cli_main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "does not load as a model with a tokenizer" in caplog.text
    assert cli_main(["generate", str(tmp_path / "nothing"), "--prompt", "x"]) == 2
    assert "has no config.json, so it is not a model folder" in caplog.text


def test_plot_skips_a_partial_last_metrics_line_and_a_resumed_run_starts_a_new_line(tmp_path, caplog):
    from r1_ds.metrics import MetricsWriter, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    assert cli_main(["plot", str(tmp_path)]) == 0 and (tmp_path / "loss.png").stat().st_size > 0
    assert "line 3 is not a complete metrics record" in caplog.text
    writer = MetricsWriter(str(tmp_path), total_steps=4, start_step=2, tensorboard=False, progress=False)
    writer.write({"step": 3, "loss": 1.8})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(str(path))] == [(1, 2.0), (2, 1.9), (3, 1.8)]


def test_alignment_checkpoint_check_runs_no_payload(tmp_path):
    """The alignment trainer's own look into a checkpoint (is it an alignment one?) reads weights-only too."""
    import torch

    from r1_ds.align.trainer import check_align_checkpoint
    from r1_ds.safe_load import UnsafeFileError

    tag = tmp_path / "global_step2"
    tag.mkdir()
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"module": {}, "r1_align_mine": _Payload(str(marker))}, tag / "mp_rank_00_model_states.pt")
    with pytest.raises(UnsafeFileError, match=r"mp_rank_00_model_states.pt holds Python objects outside"):
        check_align_checkpoint(str(tmp_path), "global_step2")
    assert not marker.exists(), "the checkpoint's payload ran"
