"""The quality benchmark's pieces on CPU at tiny size: the offline corpus and its held-out split, the passkey
task, and benchmarks/quality.py, passkey.py and quality_ablation.py end to end."""

import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import passkey, quality, quality_ablation, quality_corpus  # noqa: E402 (after the sys.path line above)
from r1_ds.evaluation.passkey import answers_correct, batch, make_example  # noqa: E402 (after the sys.path line above)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small real corpus through `r1-ds prep` (a few seconds): 1.5 MB of source, a 1k vocabulary."""
    out = tmp_path_factory.mktemp("quality_corpus")
    quality_corpus.main(
        [
            "--out",
            str(out),
            "--max-code-mb",
            "1.5",
            "--per-package-mb",
            "0.2",
            "--max-text-mb",
            "0.5",
            "--heldout-permille",
            "100",
            "--vocab-size",
            "1024",
            "--seq-len",
            "256",
        ]
    )
    return out


@pytest.fixture(scope="module")
def tokenizer(corpus):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(corpus / "pack" / "tokenizer"))


def _json(path):
    with open(path) as f:
        return json.load(f)


def _files(root):
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


def test_heldout_shares_no_source_with_train(corpus):
    raw = corpus / "raw"
    train, held = _files(raw / "train" / "code"), _files(raw / "heldout" / "code")
    assert train and held and not train & held
    ids = {}
    for s in ("train", "heldout"):
        with open(raw / s / "text.jsonl") as f:
            ids[s] = {json.loads(line)["id"] for line in f}
    assert not ids["train"] & ids["heldout"]
    assert all(quality_corpus.heldout(k, 100) for k in held) and not any(quality_corpus.heldout(k, 100) for k in train)
    metas = [_json(corpus / "pack" / s / "meta.json") for s in ("train", "heldout")]
    assert metas[0]["tokenizer_sha256"] == metas[1]["tokenizer_sha256"]  # one tokenizer
    assert all(m["tokenizer"] == "../tokenizer" and m["num_sequences"] > 0 for m in metas)
    summary = _json(corpus / "pack" / "corpus.json")["pack"]
    assert summary["train"]["tokens"] > 10 * summary["heldout"]["tokens"] > 0


def test_passkey_example_is_deterministic_and_answerable(tokenizer):
    a, b, c = (make_example(tokenizer, 600, s) for s in (7, 7, 8))
    assert a == b and a != c
    assert len(a.input_ids) == 600
    key_text = tokenizer.decode(a.input_ids[a.answer_start :]).strip()
    assert key_text == a.key and len(a.key) == 5 and a.key.isdigit()
    needle = tokenizer.decode(a.input_ids[a.needle_start : a.answer_start])
    assert needle.startswith(f" The pass key is {a.key}.")
    assert tokenizer.decode(a.input_ids[: a.answer_start]).count(a.key) == 2  # only in the needle
    depths = [make_example(tokenizer, 600, s).depth for s in range(20)]
    assert 0.03 < min(depths) < max(depths) < 0.97 and len(set(depths)) > 5
    ids, labels = batch([a, c])
    assert (labels[0, : a.answer_start] == -100).all() and (
        labels[0, a.answer_start :] == ids[0, a.answer_start :]
    ).all()
    with pytest.raises(ValueError, match="too short.*Fix"):
        make_example(tokenizer, 40, 0)


class _Oracle(torch.nn.Module):
    """Logits that put the next token (shifted by `shift`) first: exact when shift is 0."""

    def __init__(self, vocab, shift=0):
        super().__init__()
        self.vocab, self.shift = vocab, shift

    def forward(self, input_ids, use_cache=False, logits_to_keep=0):  # logits_to_keep as HF models take it
        nxt = torch.roll(input_ids, -1, dims=1)
        nxt = (nxt + self.shift) % self.vocab
        nxt = nxt[:, -logits_to_keep:] if logits_to_keep else nxt
        return type("Out", (), {"logits": torch.nn.functional.one_hot(nxt, self.vocab).float()})()


def test_passkey_accuracy_is_exact_match(tokenizer):
    exs = [make_example(tokenizer, 300, s) for s in range(3)]
    vocab = len(tokenizer)
    assert answers_correct(_Oracle(vocab), exs) == [True, True, True]
    assert answers_correct(_Oracle(vocab, shift=1), exs) == [False, False, False]


def test_quality_end_to_end_tiny(corpus, tmp_path):
    out = tmp_path / "q.json"
    assert (
        quality.main(
            [
                "--tiny",
                "--data",
                str(corpus / "pack"),
                "--token-budget",
                "3000",
                "--eval-sequences",
                "4",
                "--final-sequences",
                "8",
                "--work-dir",
                str(tmp_path / "runs"),
                "--export-r1",
                str(tmp_path / "r1"),
                "--export-llama",
                str(tmp_path / "llama"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    res = _json(out)
    assert res["commit"] and res["card"] == "cpu" and res["command"].startswith("python benchmarks/quality.py --tiny")
    for name in ("r1", "llama"):
        r = res["models"][name]
        assert r["tokens"] == r["steps"] * 4 * 128 and len(r["curve"]) >= 2
        assert r["curve"][-1]["tokens"] == r["tokens"]
        assert r["curve"][-1]["heldout_loss"] < r["curve"][0]["heldout_loss"]  # both learn
    assert (tmp_path / "q.png").stat().st_size > 0
    # the export is the trained model: `r1-ds eval perplexity`'s loader and function give the table's number
    from r1_ds.data import PackedShards
    from r1_ds.evaluation.model_io import load_causal_lm
    from r1_ds.evaluation.perplexity import heldout_loss

    model, _ = load_causal_lm(str(tmp_path / "r1"), needs_tokenizer=False)
    again = heldout_loss(
        model, PackedShards(str(corpus / "pack" / "heldout")), seq_len=128, batch_size=2, max_sequences=8
    )
    assert again["loss"] == pytest.approx(res["models"]["r1"]["final"]["loss"], abs=1e-4)


def test_passkey_benchmark_tiny(corpus, tmp_path):
    out = tmp_path / "p.json"
    assert passkey.main(["--tiny", "--tokenizer", str(corpus / "pack" / "tokenizer"), "--json", str(out)]) == 0
    rows = _json(out)["rows"]
    assert [r["model"] for r in rows] == ["r1", "r1_window", "llama"]
    assert all(r["length"] == 256 and r["eval_examples"] == 4 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert rows[0]["first_loss"] != rows[1]["first_loss"]  # window-only is another function of the same weights
    assert passkey.steps_for(["4096:100", "7"], 4096) == 100 and passkey.steps_for(["4096:100", "7"], 8) == 7


def test_passkey_refuses_a_missing_weights_folder(corpus, tmp_path, capsys):
    missing = tmp_path / "llama_hf"
    args = ["--models", "llama", "--llama", str(missing), "--tokenizer", str(corpus / "pack" / "tokenizer")]
    assert passkey.main(args) == 2
    err = capsys.readouterr().err
    assert f"--llama {missing}" in err and "config.json" in err and "--export-llama" in err


def test_ablation_tiny(corpus, tmp_path):
    out = tmp_path / "a.json"
    quality_ablation.main(
        [
            "--data",
            str(corpus / "pack"),
            "--steps",
            "2",
            "--seeds",
            "0",
            "--hidden",
            "64",
            "--layers",
            "1",
            "--seq-len",
            "128",
            "--batch",
            "2",
            "--eval-sequences",
            "2",
            "--variants",
            "full",
            "no_L2",
            "no_gate",
            "--json",
            str(out),
        ]
    )
    res = _json(out)
    assert [s["variant"] for s in res["summary"]] == ["full", "no_L2", "no_gate"]
    assert res["summary"][0]["vs_full"] == 0.0 and res["summary"][1]["vs_full"] != 0.0
    assert "| no_gate |" in (tmp_path / "a.md").read_text()


def test_passkey_fine_tunes_through_lengths(corpus, tmp_path):
    """One model carried through the lengths, shortest first: a row per length, in that order, each scored."""
    out = tmp_path / "p.json"
    argv = ["--tiny", "--tokenizer", str(corpus / "pack" / "tokenizer"), "--json", str(out)]
    assert (
        passkey.main(
            [*argv, "--models", "r1", "llama", "--lengths", "256", "192", "--loss", "answer", "--split-digits"]
        )
        == 0
    )
    res = _json(out)
    assert res["loss"] == "answer" and res["split_digits"]
    assert [(r["model"], r["length"], r["micro_batch"]) for r in res["rows"]] == [
        ("r1", 192, 2),
        ("r1", 256, 2),
        ("llama", 192, 2),
        ("llama", 256, 2),
    ]
    assert all(0 <= r["window_only_accuracy"] <= 1 for r in res["rows"][:2])  # the same weights, window only
    assert all(r["eval_examples"] == 4 and 0 <= r["accuracy"] <= 1 for r in res["rows"])
    assert all(r["first_loss"] == pytest.approx(r["first_answer_loss"]) for r in res["rows"])  # answer-only loss


def test_digit_split_gives_one_token_per_digit(tokenizer):
    from benchmarks.passkey_small import DigitSplit

    split = DigitSplit(tokenizer)
    text = " The pass key is 48213. Remember it. 48213 is the pass key."
    ids = split(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    key = [tokenizer.decode([i]) for i in split(" 48213")["input_ids"]]
    assert "".join(key) == " 48213" and all(sum(c.isdigit() for c in piece) <= 1 for piece in key)
    assert split([text, " 7"])["input_ids"] == [ids, split(" 7")["input_ids"]]
    ex = make_example(split, 256, 3)
    answer = [tokenizer.decode([i]) for i in ex.input_ids[ex.answer_start :]]
    assert "".join(answer) == " " + ex.key and [c for c in answer if c.strip()] == list(ex.key)


def test_passkey_small_end_to_end(corpus, tmp_path, capsys):
    from benchmarks import passkey_small

    out = tmp_path / "small.json"
    args = ["--tokenizer", str(corpus / "pack" / "tokenizer"), "--models", "llama", "r1", "--split-digits"]
    args += ["--lengths", "192", "--steps", "2", "--eval-every", "2", "--eval-examples", "2", "--batch", "2"]
    assert passkey_small.main([*args, "--json", str(out)]) == 0
    rows = _json(out)["rows"]
    assert [r["model"] for r in rows] == ["llama", "r1"]
    assert "needle paragraph" in capsys.readouterr().out  # the closing table, R1's routing rate in it


def test_passkey_small_curriculum_carries_one_model_through_the_lengths(corpus, tmp_path, monkeypatch):
    from benchmarks import passkey_small

    built = []
    make = passkey_small.make_model
    monkeypatch.setattr(passkey_small, "make_model", lambda *a: built.append(a[0]) or make(*a))
    out = tmp_path / "curriculum.json"
    args = ["--tokenizer", str(corpus / "pack" / "tokenizer"), "--models", "llama", "r1", "--split-digits"]
    args += ["--curriculum", "192:2", "256:1", "--tokens-per-step", "384", "--eval-examples", "2"]
    assert passkey_small.main([*args, "--json", str(out)]) == 0
    assert built == ["llama", "r1"]  # one model each, carried through both stages
    rows = _json(out)["rows"]
    assert [(r["model"], r["length"], r["steps"], r["micro_batch"]) for r in rows] == [
        ("llama", 192, 2, 2),
        ("llama", 256, 1, 1),
        ("r1", 192, 2, 2),
        ("r1", 256, 1, 1),
    ]
    assert all(r["curve"][-1]["step"] == r["steps"] for r in rows)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--curriculum", "256:0"], ["'256:0'", "LENGTH:STEPS"]),
        (["--curriculum", "256"], ["'256'", "--curriculum 256:1500"]),
        (["--r1-attn", "flex_attention"], ["--device cuda", "--r1-attn eager"]),
    ],
)
def test_passkey_small_refuses_bad_arguments_by_name(argv, words):
    from benchmarks import passkey_small

    with pytest.raises(SystemExit) as e:
        passkey_small.parse_args(argv)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_passkey_r1_l2_starts_as_the_trained_r1(corpus, tmp_path):
    """r1_l2: the R1 folder with L2's research options on, L2's own q/k/v copied from the shared ones, so before
    any step it computes what R1 with per-token routing computes; fine-tuned and scored like the others."""
    from transformers import AutoTokenizer

    from r1_ds.model import R1ForCausalLM

    tok = str(corpus / "pack" / "tokenizer")
    r1_dir, _ = passkey.tiny_models(tok, str(tmp_path))
    args = passkey.parse_args(["--r1", r1_dir, "--tokenizer", tok])
    model = passkey.load("r1_l2", args, 256)
    assert model.config.l2_projections == "separate" and model.config._attn_implementation == "eager"
    token_only = R1ForCausalLM.from_pretrained(r1_dir, l2_routing="token").eval()
    token_only.set_attn_implementation("eager")
    ids = torch.tensor([passkey.make_example(AutoTokenizer.from_pretrained(tok), 256, 0).input_ids], dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(input_ids=ids, use_cache=False).logits, token_only(input_ids=ids, use_cache=False).logits
        )
    out = tmp_path / "p.json"
    assert passkey.main(["--tiny", "--tokenizer", tok, "--models", "r1_l2", "--json", str(out)]) == 0
    assert [(r["model"], r["length"]) for r in _json(out)["rows"]] == [("r1_l2", 256)]


def test_passkey_r1_l2_refuses_lengths_the_eager_path_cannot_hold(corpus, capsys):
    args = ["--models", "r1_l2", "--lengths", "1024", "16384", "--tokenizer", str(corpus / "pack" / "tokenizer")]
    assert passkey.main(args) == 2
    err = capsys.readouterr().err
    assert "16384" in err and "eager reference" in err and "--lengths 4096" in err
