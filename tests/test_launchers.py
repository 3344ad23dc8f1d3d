"""`r1-ds train` under each launcher, as a user runs it: torchrun, accelerate launch (data parallel +
ZeRO-1, the DeepSpeed JSON taken from accelerate), and the deepspeed CLI (a 2-stage pipeline on CPU);
plus the batch-size check failing a bare `python -m r1_ds.train` with a readable message."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TRAIN = ["-m", "r1_ds.train", "--steps", "2", "--seq-len", "32", "--no-progress", "--set", "log.tensorboard=false"]


def _env():
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def _launch(cmd, out, timeout=240):
    proc = subprocess.run(
        cmd + ["--output-dir", str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert steps == [1, 2]
    assert open(out / "checkpoints" / "latest").read() == "global_step2"
    return proc, json.load(open(out / "ds_config.json"))


def test_torchrun(tmp_path):
    _, ds = _launch([os.path.join(BIN, "torchrun"), "--nproc_per_node", "2", *TRAIN], tmp_path)
    assert ds["train_batch_size"] == 8  # micro 2 x grad_accum 2 x data 2


def accelerate_zero1_command(tmp_path) -> list[str]:
    """`accelerate launch` of TRAIN on 2 processes with the tiny CPU DeepSpeed JSON at ZeRO-1 (written to tmp_path)."""
    zero1 = json.load(open(os.path.join(ROOT, "ds_configs", "tiny_cpu.json")))
    zero1["zero_optimization"] = {"stage": 1}
    (tmp_path / "zero1.json").write_text(json.dumps(zero1))
    return [
        os.path.join(BIN, "accelerate"),
        "launch",
        "--use_deepspeed",
        "--deepspeed_config_file",
        str(tmp_path / "zero1.json"),
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *TRAIN,
    ]


def test_accelerate_launch_data_parallel_zero1(tmp_path):
    cmd = accelerate_zero1_command(tmp_path)
    _, ds = _launch(cmd, tmp_path / "run")
    assert ds["zero_optimization"]["stage"] == 1  # the file accelerate was given, not the default


def test_deepspeed_launcher_pipeline(tmp_path):
    cmd = [os.path.join(BIN, "deepspeed"), "--num_gpus", "2", "--module", *TRAIN[1:], "--pipe", "2"]
    proc, _ = _launch(cmd, tmp_path)
    assert "layout pipe=2 x tensor=1 x data=1" in proc.stdout + proc.stderr


def test_bad_batch_config_fails_the_command_with_the_numbers(tmp_path):
    cmd = [sys.executable, *TRAIN, "--global-batch", "6", "--micro-batch", "4", "--output-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "BatchSizeError: batch sizes disagree" in proc.stderr
    assert "train_batch_size is not divisible by micro_batch 4 x data_parallel 1 = 4" in proc.stderr
    assert "Traceback" not in proc.stderr


_EXIT_SCRIPT = """
import atexit, sys
import torch.distributed as dist
from r1_ds.distributed import exit_process
if sys.argv[1] == "distributed":
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
atexit.register(lambda: print("interpreter teardown ran", file=sys.stderr))
print("written before the exit", end="")  # no newline: only an explicit flush gets it out
exit_process(3)
"""


@pytest.mark.parametrize("mode", ["distributed", "plain"])
def test_exit_process_keeps_the_code_and_output_and_skips_teardown_after_distributed(mode, tmp_path):
    """A rank that ran a process group ends without the interpreter's teardown (where a gloo thread destroyed
    while joinable can abort a finished rank), yet keeps its exit code and everything it printed."""
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, mode, str(tmp_path / "store")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert proc.stdout == "written before the exit"
    assert ("interpreter teardown ran" in proc.stderr) == (mode == "plain"), proc.stderr[-3000:]
