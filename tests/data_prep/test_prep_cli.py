"""End to end: the CLI on a small built-in sample, the output contract, honest counts, errors, and crash-resume."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.cli import main
from data_prep.shards import PackedShards
from data_prep.triples import load_triples

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "--sample-text-docs",
    "40",
    "--sample-code-files",
    "20",
    "--sample-images",
    "8",
    "--quality-model",
    "none",
    "--vocab-size",
    "512",
    "--seq-len",
    "64",
    "--shard-rows",
    "32",
    "--part-size",
    "25",
    "--image-part-size",
    "6",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "out"
    assert main(["--out", str(out), *SMALL]) == 0
    return out


def test_output_layout(run_dir):
    for name in (
        "tokenizer/tokenizer.json",
        "shards/meta.json",
        "stats.json",
        "triples/triples.jsonl",
        "triples/meta.json",
        "prep_config.json",
    ):
        assert (run_dir / name).is_file(), name
    for modality in ("text", "code", "image"):
        assert list((run_dir / "kept" / modality).glob("part_*.jsonl"))
        assert list((run_dir / "rejects" / modality).glob("part_*.jsonl"))
    meta = json.loads((run_dir / "shards" / "meta.json").read_text())
    assert (
        meta["tokenizer"] == "../tokenizer"
        and (run_dir / "shards" / meta["tokenizer"]).resolve() == (run_dir / "tokenizer").resolve()
    )
    assert meta["seq_len"] == 64 and meta["vocab_size"] <= 512 and meta["dtype"] == "uint16"
    ps = PackedShards(run_dir / "shards")
    assert len(ps) == meta["num_sequences"] > 0 and ps[0].shape == (64,)
    assert not list(run_dir.rglob(".tmp-*"))


def test_counts_add_up(run_dir):
    stats = json.loads((run_dir / "stats.json").read_text())
    total_in = 0
    for modality, s in stats["modalities"].items():
        assert s["input"] == s["kept"] + s["dropped"], modality
        assert s["dropped"] == sum(s["dropped_by_reason"].values()), modality
        kept = sum(1 for p in (run_dir / "kept" / modality).glob("*.jsonl") for _ in p.open())
        rejects = [
            json.loads(line) for p in sorted((run_dir / "rejects" / modality).glob("*.jsonl")) for line in p.open()
        ]
        assert kept == s["kept"] and len(rejects) == s["dropped"], modality
        assert {f"{r['stage']}/{r['reason']}" for r in rejects} == set(s["dropped_by_reason"]), modality
        stages = list(s["stages"].values())
        for a, b in zip(stages, stages[1:]):
            assert a["kept"] == b["in"]
        total_in += s["input"]
    assert stats["totals"]["input"] == total_in == stats["totals"]["kept"] + stats["totals"]["dropped"]


def test_bad_inputs_dropped_with_reasons(run_dir):
    stats = json.loads((run_dir / "stats.json").read_text())
    reasons = {m: set(s["dropped_by_reason"]) for m, s in stats["modalities"].items()}
    assert {
        "read/non_utf8",
        "read/bad_json",
        "read/missing_field",
        "read/unsupported_file",
        "length/empty",
        "length/too_long",
        "exact_dedup/duplicate",
        "entropy/low_entropy",
    } <= reasons["text"]
    assert any(r.startswith("gopher_repetition/") for r in reasons["text"])
    assert {
        "read/binary",
        "read/non_utf8",
        "length/empty",
        "language/unknown_language",
        "exact_dedup/duplicate",
        "code_heuristics/auto_generated",
        "code_heuristics/max_line_length",
        "syntax/syntax_error",
        "syntax/compile_error",
    } <= reasons["code"]
    assert {
        "read/bad_json",
        "read/missing_file",
        "caption/empty_caption",
        "image_decode/corrupt_image",
        "image_decode/not_an_image",
        "image_decode/too_small",
        "exact_dedup/duplicate",
    } <= reasons["image"]
    assert stats["modalities"]["image"]["skipped_stages"]["clip"].startswith("no CLIP checkpoint")
    assert stats["modalities"]["text"]["skipped_stages"]["quality_classifier"].startswith("disabled")


def test_shards_decode_to_kept_documents(run_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id == tok.eos_token_id
    ps = PackedShards(run_dir / "shards")
    stream = np.concatenate([ps[i] for i in range(len(ps))])[: ps.meta["num_tokens"]].tolist()
    kept = [
        json.loads(line)["text"]
        for m in ("text", "code")
        for p in sorted((run_dir / "kept" / m).glob("*.jsonl"))
        for line in p.open()
    ]
    docs, cur = [], []
    for t in stream:
        if t == ps.eos_token_id:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(t)
    assert docs == kept


def test_triples_reproduce_their_images(run_dir):
    from PIL import Image

    triples = list(load_triples(run_dir))
    kinds = {t["kind"] for t in triples}
    assert {"image-text-code", "text-code"} <= kinds
    shapes = [t for t in triples if t["kind"] == "image-text-code"]
    assert len(shapes) == 8  # every generated shape survives; the bad entries do not
    for t in shapes:
        scope = {}
        exec(compile(t["code"], t["id"], "exec"), scope)  # our own generated PIL program
        drawn = scope["img"]
        stored = Image.open(t["image"]).convert("RGB")
        assert drawn.tobytes() == stored.tobytes(), t["id"]
        assert len(t["image_views"]) == 2 and all(Path(v).is_file() for v in t["image_views"])


def test_errors_name_input_rule_and_fix(tmp_path, caplog):
    assert main(["--out", str(tmp_path / "o"), "--text", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: path does not exist" in caplog.text and "pass an existing" in caplog.text
    caplog.clear()
    assert main(["--out", str(tmp_path / "o"), "--sample", "--seq-len", "1"]) == 2
    assert "--seq-len 1: must be at least 2" in caplog.text
    caplog.clear()
    assert main(["--quality-head-out", str(tmp_path / "h")]) == 2
    assert "needs --train-quality-head" in caplog.text


def test_changed_settings_refused(run_dir, caplog):
    assert main(["--out", str(run_dir), *SMALL, "--seq-len", "32"]) == 2
    assert "differs in: seq_len" in caplog.text and "--overwrite" in caplog.text


def test_import_is_light():
    code = (
        "import sys, data_prep, data_prep.cli, data_prep.prep, data_prep.shards, data_prep.stages;"
        "heavy = ('torch', 'transformers', 'open_clip', 'tokenizers', 'PIL', 'tree_sitter');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------- crash + resume
def _prep(out, crash=None):
    env = {k: v for k, v in os.environ.items() if k != "DATA_PREP_CRASH_AT"}
    if crash:
        env["DATA_PREP_CRASH_AT"] = crash
    return subprocess.run(
        [sys.executable, "-m", "data_prep", "--out", str(out), *SMALL, "--log-level", "WARNING"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )


def _tree(root):
    # kept/rejects record each document's source path, which contains the output folder: normalise it. The
    # executor's logs (engine/<modality>/logs: timestamps, timings) are the run's diary, not its output.
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes().replace(str(root).encode(), b"<OUT>")).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "logs" not in p.relative_to(root).parts[2:3]
    }


@pytest.fixture(scope="module")
def reference_tree(run_dir):
    return _tree(run_dir)


@pytest.mark.parametrize("crash", ["pack:2", "filter:2"])
def test_killed_run_resumes_to_identical_output(tmp_path, reference_tree, crash):
    out = tmp_path / "out"
    killed = _prep(out, crash)
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no cleanup ran
    if crash.startswith("pack"):
        assert (out / "shards" / "shard_00001.bin").is_file() and not (out / "shards" / "meta.json").exists()
    else:
        assert len(list((out / "state").rglob("part_*.json"))) == 2 and not (out / "stats.json").exists()
    resumed = _prep(out)
    assert resumed.returncode == 0, resumed.stderr
    assert _tree(out) == reference_tree  # nothing duplicated, nothing lost, byte for byte


def test_outputs_load_with_datasets(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    stats = json.loads((run_dir / "stats.json").read_text())
    for modality in ("text", "code", "image"):
        files = sorted(str(p) for p in (run_dir / "kept" / modality).glob("part_*.jsonl"))
        ds = datasets.load_dataset("json", data_files=files, split="train", cache_dir=str(tmp_path))
        assert ds.num_rows == stats["modalities"][modality]["kept"]
    ds = datasets.load_dataset(
        "json", data_files=str(run_dir / "triples" / "triples.jsonl"), split="train", cache_dir=str(tmp_path)
    )
    assert ds.num_rows == stats["triples"]["num_records"]
