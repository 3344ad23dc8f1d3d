"""An exported model under lm-evaluation-harness (HFLM, batch size 4) on the shipped local tasks:
loglikelihood (multiple choice) and generation. Offline: the tasks read local JSONL files."""

import os

import pytest
import torch

pytestmark = pytest.mark.slow
lm_eval = pytest.importorskip("lm_eval")
TASKS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "r1_ds", "evaluation", "lm_eval_tasks"
)


def _left_padding_supported() -> bool:
    from r1_ds.model import R1Config, R1ForCausalLM

    model = R1ForCausalLM(R1Config.from_preset("tiny", vocab_size=64)).eval()
    try:
        model(input_ids=torch.ones(2, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    except ValueError:
        return False
    return True


def _task_dir(tmp_path, name: str) -> str:
    """The shipped task YAML with its data path made absolute (the shipped one is relative to the repo root)."""
    text = open(os.path.join(TASKS, f"{name}.yaml")).read().replace("r1_ds/evaluation/lm_eval_tasks", TASKS)
    (tmp_path / f"{name}.yaml").write_text(text)
    return str(tmp_path)


def _evaluate(tmp_path, task: str) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from tests.test_eval_cli import tiny_export

    lm = HFLM(pretrained=tiny_export(), backend="causal", batch_size=4, device="cpu")
    res = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=_task_dir(tmp_path, task)))
    return res["results"][task]


def test_loglikelihood_task_runs_batched(tmp_path):
    res = _evaluate(tmp_path, "r1_synthetic_choice")
    assert 0.0 <= res["acc,none"] <= 1.0 and res["sample_len"] == 12


@pytest.mark.xfail(
    not _left_padding_supported(),
    raises=ValueError,
    strict=True,
    reason="lm-eval pads generation batches on the left, which R1 rejects until it supports it",
)
def test_generation_task_runs_batched(tmp_path):
    res = _evaluate(tmp_path, "r1_synthetic_copy")
    assert 0.0 <= res["exact_match,none"] <= 1.0
