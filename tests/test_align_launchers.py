"""`r1-ds train` with the alignment objective under `accelerate launch` (2 processes, data parallel, ZeRO-1 from
the DeepSpeed JSON accelerate is given), as a user runs it: the launcher harness of test_launchers.py and the
triples and settings of test_align_train.py."""

import json

import pytest

from tests.test_align_train import align_overrides, write_sample_triples
from tests.test_launchers import _launch, accelerate_zero1_command

pytestmark = pytest.mark.slow


def test_accelerate_launch_trains_the_alignment_objective(tmp_path):
    data = write_sample_triples(str(tmp_path / "data"), images=32, code_files=8)
    settings = align_overrides(
        data,
        "unused",
        **{
            "schedule.global_batch": 16,
            "data.micro_batch": 8,
            "schedule.warmup_steps": 0,
            "log.every": 1,
            "align.eval_every": 2,
        },
    )
    for key in ("deepspeed_config", "output_dir", "schedule.steps"):  # from accelerate, _launch and TRAIN
        settings.pop(key)
    cmd = accelerate_zero1_command(tmp_path)
    for key, value in settings.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    proc, ds = _launch(cmd, tmp_path / "run")
    assert ds["zero_optimization"]["stage"] == 1 and ds["train_batch_size"] == 16  # micro 8 x data 2
    log = proc.stdout + proc.stderr
    assert "alignment (align): layout pipe=1 x tensor=1 x data=2" in log
    last = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")][-1]
    assert last["pairs_per_s"] > 0 and last["align/image-text/loss"] > 0 and "eval/text->code/R@1" in last
