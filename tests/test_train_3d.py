"""`r1-ds train` with tensor parallelism, through the real entry point under torchrun: tensor 2 x data 2,
pipe 2 x tensor 2 and pipe 2 x tensor 2 x data 2 give the one-process run's losses and gradient norms
on the same data; each checkpoint exports to one Hugging Face folder with the trained model's logits;
a 3D ZeRO-1 checkpoint goes through ds_to_universal and resumes as pipe 2 x tensor 1 x data 2; a layout
change without conversion is refused. Plus the pure parts: the start-up layout check, the resume
rules, and the data split by data rank.

Every run: tiny preset, fp32, synthetic data, seq 64, global batch 4 (micro 2), 3 steps, checkpoints
at steps 2 and 3, DropPath off (its masks are drawn per data and pipe rank, so they differ between
layouts). `tests/train_probe.py` runs `r1_ds.train.main` and then saves the trained model's logits of a
fixed batch per rank. About 2 minutes on 2 idle cores, most of it process start-up. Each launch has a time
limit (240 s, 360 s for 8 processes, times R1_TEST_TIMEOUT_SCALE); one that runs over is killed with every
process it started (torch elastic puts each worker in a session of its own).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import torch

from r1_ds.checkpoint import CheckpointError, SavedCheckpoint, check_resume_layout
from r1_ds.local_ranks import scaled_timeout
from r1_ds.metrics import read_metrics
from r1_ds.parallel.topology import LayoutError, ParallelDims

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
ARGS = [
    "--preset",
    "tiny",
    "--seq-len",
    "64",
    "--global-batch",
    "4",
    "--micro-batch",
    "2",
    "--steps",
    "3",
    "--warmup-steps",
    "1",
    "--save-every",
    "2",
    "--seed",
    "7",
    "--no-progress",
    "--set",
    "log.tensorboard=false",
]
LAYOUTS = {  # name -> (pipe, tensor, data, ZeRO stage)
    "t2d2": (1, 2, 2, 0),  # no pipeline: DeepSpeed gets the grid as mpu; fp32 clipping through our patch
    "p2t2": (2, 2, 1, 0),
    "p2t2d2": (2, 2, 2, 1),  # ZeRO-1: optimizer shards, so ds_to_universal can convert it
}


# ----------------------------------------------------------------------------- runs (each once per session)


@functools.cache
def _tmp() -> str:
    path = tempfile.mkdtemp(prefix="r1_ds_train_3d_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _ds_json(zero: int) -> str:
    path = os.path.join(_tmp(), f"zero{zero}.json")
    if not os.path.isfile(path):
        ds = json.load(open(os.path.join(ROOT, "ds_configs", "tiny_cpu.json")))
        ds["zero_optimization"] = {"stage": zero}
        with open(path, "w") as f:
            json.dump(ds, f)
    return path


def _env() -> dict:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, read from /proc (psutil is not a dependency)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # "pid (comm) state ppid ..."
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _launch(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd` in a session of its own; past `timeout` seconds (times R1_TEST_TIMEOUT_SCALE) kill it and every
    process it started (torchrun's workers sit in sessions of their own), then fail the test."""
    timeout = scaled_timeout(timeout)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # an orphaned grandchild still holds the pipes
            out, err = "", ""
        pytest.fail(
            f"{' '.join(cmd)}\ndid not finish in {timeout:.0f} s and was killed with its workers. Fix: look "
            "for a hang in the output below, or raise R1_TEST_TIMEOUT_SCALE on a slow machine.\n"
            + out[-3000:]
            + err[-5000:]
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _train(name: str, nproc: int, *extra: str, expect: int = 0) -> dict:
    """`python -m r1_ds.train` (via tests.train_probe) on `nproc` processes; the run folder, metrics and
    each rank's probe logits."""
    out = os.path.join(_tmp(), name)
    launcher = (
        [sys.executable]
        if nproc == 1
        # --standalone: torchrun picks a free port itself
        else [os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", str(nproc)]
    )
    proc = _launch(
        [*launcher, "-m", "tests.train_probe", *ARGS, *extra, "--output-dir", out], timeout=360 if nproc >= 8 else 240
    )
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-5000:]
    if expect:
        return {"dir": out, "stderr": proc.stderr}
    metrics = {r["step"]: r for r in read_metrics(os.path.join(out, "metrics.jsonl"))}
    logits = [torch.load(os.path.join(out, "probe", f"rank{r}.pt")) for r in range(nproc)]
    return {"dir": out, "metrics": metrics, "logits": logits, "stderr": proc.stderr}


@functools.cache
def one_process() -> dict:
    return _train("one_process", 1)


@functools.cache
def layout_run(name: str) -> dict:
    pipe, tensor, data, zero = LAYOUTS[name]
    return _train(
        name, pipe * tensor * data, "--pipe", str(pipe), "--tensor", str(tensor), "--deepspeed_config", _ds_json(zero)
    )


# Trained weights of two layouts agree to rounding: tensor-parallel shards sum their partial products in
# another order, and Adam's normalised steps carry those differences into the weights. Measured up to
# 1.2e-5 on an AVX2 CPU (below 1e-5 on others); a wrong or missing shard moves logits by far more.
LOGITS_ATOL = 5e-5


def trained_logits(run: dict, pipe: int, tensor: int, data: int) -> torch.Tensor:
    """The full (B, T, V) logits of the trained model: the vocabulary shards of the last stage's tensor
    ranks (data replica 0), side by side."""
    dims = ParallelDims(pipe=pipe, tensor=tensor, data=data)
    shards = [run["logits"][dims.rank(pipe=pipe - 1, data=0, tensor=t)] for t in range(tensor)]
    return torch.cat(shards, dim=-1)


def _assert_same_training(run: dict, ref: dict, steps) -> None:
    for step in steps:
        for key in ("loss", "grad_norm"):
            a, b = run["metrics"][step][key], ref["metrics"][step][key]
            assert a == pytest.approx(b, rel=1e-5), (step, key, a, b)
        assert run["metrics"][step]["lr"] == ref["metrics"][step]["lr"]


def _export_logits(ckpt: str, out: str) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    import r1_ds.model  # noqa: F401  (registers the R1 classes with Auto*)
    from r1_ds.cli import main as cli_main
    from tests.train_probe import probe_ids

    assert cli_main(["export", ckpt, out]) == 0
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        return model(input_ids=probe_ids()).logits


# ----------------------------------------------------------------------------- 3D runs through the trainer


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_trains_like_one_process_and_exports_the_trained_model(name, tmp_path):
    pipe, tensor, data, _ = LAYOUTS[name]
    ref, run = one_process(), layout_run(name)
    assert f"layout pipe={pipe} x tensor={tensor} x data={data}" in run["stderr"]
    assert ref["metrics"][3]["grad_norm"] > 1.0  # clipping (at 1.0) acts, so a miscounted norm would show
    _assert_same_training(run, ref, steps=(1, 2, 3))
    trained = trained_logits(run, pipe, tensor, data)
    assert trained.shape == ref["logits"][0].shape  # every vocabulary shard is there
    torch.testing.assert_close(trained, ref["logits"][0], rtol=0, atol=LOGITS_ATOL)  # the weights agree too

    ckpt = os.path.join(run["dir"], "checkpoints")
    files = os.listdir(os.path.join(ckpt, "global_step3"))
    if pipe > 1:
        assert {f"layer_00-model_{t:02d}-model_states.pt" for t in range(tensor)} <= set(files)
    else:
        assert {f"mp_rank_{t:02d}_model_states.pt" for t in range(tensor)} <= set(files)
    state = torch.load(os.path.join(ckpt, "global_step3", "mp_rank_00_model_states.pt"), weights_only=False)
    assert state["r1_layout"] == {"pipe": pipe, "tensor": tensor, "data": data}
    assert state["universal_checkpoint_info"]["parameter_with_row_parallelism_patterns"]

    exported = _export_logits(ckpt, str(tmp_path / "hf"))  # tensor shards merged into one folder
    torch.testing.assert_close(exported, trained, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_3d_zero1_checkpoint_resumes_as_pipe_2_tensor_1_data_2_through_ds_to_universal(tmp_path):
    """pipe 2 x tensor 2 x data 2 (ZeRO-1), step 2 -> ds_to_universal -> `r1-ds train` at pipe 2 x tensor 1 x
    data 2 with the same settings: step 3 equals the uninterrupted run's step 3 (loss, gradient norm,
    weights), so weights and Adam state were merged and re-split correctly. The universal folder also
    exports, to the same weights as the regular checkpoint."""
    src = layout_run("p2t2d2")
    universal = os.path.join(_tmp(), "resumed_3d", "checkpoints")
    os.makedirs(universal)
    done = _launch(
        [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            os.path.join(src["dir"], "checkpoints", "global_step2"),
            "--output_folder",
            os.path.join(universal, "global_step2"),
            "--num_extract_workers",
            "1",
            "--num_merge_workers",
            "1",
        ],
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    with open(os.path.join(universal, "latest"), "w") as f:
        f.write("global_step2")

    resumed = _train("resumed_3d", 4, "--pipe", "2", "--tensor", "1", "--deepspeed_config", _ds_json(1))
    assert "is a universal checkpoint" in resumed["stderr"]  # the trainer switched load_universal on
    assert sorted(resumed["metrics"]) == [3]
    _assert_same_training(resumed, src, steps=(3,))
    torch.testing.assert_close(trained_logits(resumed, 2, 1, 2), trained_logits(src, 2, 2, 2), rtol=0, atol=LOGITS_ATOL)

    from r1_ds.checkpoint import hf_state_dict

    merged, _ = hf_state_dict(os.path.join(src["dir"], "checkpoints", "global_step2"))
    from_universal, _ = hf_state_dict(os.path.join(universal, "global_step2"))
    assert set(merged) == set(from_universal)
    for key, value in from_universal.items():
        assert torch.equal(value, merged[key]), key  # fp32 ZeRO-1: the masters are the module weights


@pytest.mark.slow
def test_a_layout_change_without_conversion_is_refused_by_the_trainer():
    """The tensor 2 x data 2 checkpoint (ZeRO-0: no optimizer shards) resumed by one process."""
    ckpt = os.path.join(layout_run("t2d2")["dir"], "checkpoints")
    run = _train("refused", 1, "--resume", ckpt, expect=2)
    msg = run["stderr"]
    assert "CheckpointError: resume:" in msg and "Traceback" not in msg
    assert "layout pipe=1 x tensor=2 x data=2; this run is pipe=1 x tensor=1 x data=1" in msg
    assert "Fix: resume with the saved layout pipe=1 x tensor=2 x data=2" in msg and "r1-ds export" in msg


# ----------------------------------------------------------------------------- pure: checks and rules


def test_start_up_layout_check_covers_what_tensor_parallelism_splits():
    dims = ParallelDims.build(4, tensor=2)
    dims.check_model(num_hidden_layers=2, level_heads=(2, 4, 8), hidden_size=64, intermediate_size=176, vocab_size=512)
    with pytest.raises(
        LayoutError,
        match=r"(?s)parallel.tensor=2 .*vocab_size=511 is not divisible by tensor=2.*"
        r"pad it to a multiple of 2",
    ):
        dims.check_model(
            num_hidden_layers=2, level_heads=(2, 4, 8), hidden_size=64, intermediate_size=176, vocab_size=511
        )
    with pytest.raises(LayoutError, match=r"intermediate_size=175 is not divisible by tensor=2"):
        dims.check_model(
            num_hidden_layers=2, level_heads=(2, 4, 8), hidden_size=64, intermediate_size=175, vocab_size=512
        )
    with pytest.raises(LayoutError, match=r"tensor=4 does not divide the 2 heads of attention level L1"):
        ParallelDims.build(4, tensor=4).check_model(
            num_hidden_layers=2, level_heads=(2, 4, 8), hidden_size=64, intermediate_size=176, vocab_size=512
        )
    with pytest.raises(LayoutError, match=r"pipe=2 x tensor=2 x data=2 = 8 ranks does not match the world size 4"):
        ParallelDims.build(4, pipe=2, tensor=2, data=2)


def test_tensor_parallel_with_zero3_is_refused():
    from r1_ds.config import ConfigError, load_train_config
    from r1_ds.train import build_ds_config

    ds = {**json.load(open(os.path.join(ROOT, "ds_configs", "tiny_cpu.json"))), "zero_optimization": {"stage": 3}}
    with pytest.raises(ConfigError, match=r"parallel.tensor=2 with zero_optimization.stage=3.*Fix:"):
        build_ds_config(load_train_config(None, {"parallel.tensor": 2}), ds, world_size=2, device_type="cpu")


def _saved(layout, *, universal=False, shards=True):
    return SavedCheckpoint(path="/ckpt/global_step2", layout=layout, universal=universal, optimizer_shards=shards)


def test_resume_layout_rules():
    ok = dict(zero_stage=1)
    check_resume_layout(_saved((2, 2, 2)), pipe=2, tensor=2, data=2, **ok)  # the same layout
    check_resume_layout(_saved((1, 2, 2), shards=False), pipe=1, tensor=2, data=4, zero_stage=0)  # data only, no shards
    check_resume_layout(_saved((2, 2, 2), universal=True), pipe=2, tensor=1, data=4, **ok)
    check_resume_layout(_saved((1, 1, 1), universal=True), pipe=1, tensor=2, data=1, **ok)
    check_resume_layout(_saved(None), pipe=1, tensor=2, data=2, **ok)  # unknown (old checkpoint): warns, loads
    with pytest.raises(
        CheckpointError,
        match=r"(?s)layout pipe=2 x tensor=2 x data=2; this run is pipe=2 x "
        r"tensor=1 x data=2.*ds_to_universal --input_folder /ckpt/global_step2 "
        r"--output_folder <new_dir>/global_step2",
    ):
        check_resume_layout(_saved((2, 2, 2)), pipe=2, tensor=1, data=2, **ok)
    with pytest.raises(CheckpointError, match=r"(?s)ds_to_universal"):  # data only, but ZeRO shards per data rank
        check_resume_layout(_saved((1, 1, 2)), pipe=1, tensor=1, data=4, **ok)
    with pytest.raises(
        CheckpointError,
        match=r"(?s)pipeline run \(pipe=2 x tensor=2 x data=1\).*pipe=1 x "
        r"tensor=2 x data=1.*r1-ds export",
    ):
        check_resume_layout(_saved((2, 2, 1), universal=True), pipe=1, tensor=2, data=1, **ok)
    with pytest.raises(CheckpointError, match=r"universal checkpoint and this run .* uses ZeRO stage 0.*stage\": 1"):
        check_resume_layout(_saved((1, 2, 1), universal=True), pipe=1, tensor=1, data=2, zero_stage=0)
    with pytest.raises(CheckpointError, match=r"(?s)pipe=1 x tensor=1 x data=2; this run is pipe=2.*r1-ds export"):
        check_resume_layout(_saved((1, 1, 2)), pipe=2, tensor=1, data=1, **ok)


def test_tensor_and_pipe_peers_read_the_same_rows_and_data_ranks_disjoint_ones():
    """The trainer reads rows by `dims.coords(rank).data`; DeepSpeed's topology (which forms the gradient
    all-reduce groups) must agree on which ranks are replicas of one data slice: those read identical rows,
    different data ranks disjoint rows that together make the global batch."""
    from r1_ds.data import ProgressiveSampler, Stage

    dims = ParallelDims.build(8, pipe=2, tensor=2)
    topo = dims.topology()
    sampler = ProgressiveSampler(64, [Stage(start=0, steps=4, global_batch=8, data_fraction=1.0)], seed=3)
    for step in range(4):
        rows = {
            rank: sampler.micro_batches(step, data_rank=dims.coords(rank).data, data_size=dims.data, micro_batch=2)
            for rank in range(8)
        }
        by_data = []
        for d in range(dims.data):
            group = topo.filter_match(data=d)  # DeepSpeed's ranks of data slice d: every pipe x tensor peer
            assert len(group) == dims.pipe * dims.tensor
            first = rows[group[0]]
            for rank in group[1:]:
                assert len(rows[rank]) == len(first)
                assert all((a == b).all() for a, b in zip(rows[rank], first)), (step, d, rank)
            by_data.append(set().union(*map(set, first)))
        assert not by_data[0] & by_data[1]
        assert by_data[0] | by_data[1] == set(sampler.global_indices(step))
