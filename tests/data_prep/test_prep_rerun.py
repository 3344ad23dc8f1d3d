"""Reruns of `r1-ds prep`: changed inputs redo the stages that read them (tokenizer and shards included), an
unchanged rerun rewrites nothing, a reused tokenizer (--tokenizer DIR) packs compatible folders, damaged shards
are repaired, and empty inputs are one-line user errors."""

import json
import os
import shutil

import numpy as np
import pytest

from data_prep.cli import main
from data_prep.shards import PackedShards

SMALL = [
    "--quality-model",
    "none",
    "--vocab-size",
    "300",
    "--seq-len",
    "32",
    "--shard-rows",
    "16",
    "--log-level",
    "WARNING",
]


def _write_docs(folder, texts, name="docs.jsonl"):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def _prep(out, corpus, *extra):
    return main(["--out", str(out), "--text", str(corpus), *SMALL, *extra])


def _files(root):
    """path -> (bytes, mtime_ns) of every file under root."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    }


def _packed_texts(out):
    """The documents the shards hold, decoded."""
    from tokenizers import Tokenizer

    ps = PackedShards(out / "shards")
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    stream = np.concatenate([ps[i] for i in range(len(ps))])[: ps.meta["num_tokens"]].tolist()
    docs, cur = [], []
    for t in stream:
        if t == ps.eos_token_id:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(t)
    return docs


def _kept(out):
    """(source file name, line number, text) of the kept text documents, in order."""
    parts = sorted((out / "kept" / "text").glob("part_*.jsonl"))
    sources = [(r["source"], r["text"]) for p in parts for r in map(json.loads, p.open())]
    return [(os.path.basename(src.rsplit(":", 1)[0]), int(src.rsplit(":", 1)[1]), text) for src, text in sources]


@pytest.fixture
def corpus(prose, tmp_path):
    folder = tmp_path / "corpus"
    _write_docs(folder, prose[:3])
    return folder


def test_changed_inputs_redo_the_tokenizer_and_shards_and_an_unchanged_rerun_rewrites_nothing(corpus, prose, tmp_path):
    out = tmp_path / "out"
    assert _prep(out, corpus) == 0
    assert _packed_texts(out) == [t for *_, t in _kept(out)] and len(_kept(out)) >= 2
    before = _files(out)
    assert _prep(out, corpus) == 0
    after = _files(out)
    # stats.json is the run's report, rewritten each time (same bytes); every stage's output stays untouched
    assert after.keys() == before.keys() and after["stats.json"][0] == before["stats.json"][0]
    assert all(after[k] == before[k] for k in before if k != "stats.json")

    _write_docs(corpus, prose[3:7], name="more.jsonl")  # new inputs in the same folder
    assert _prep(out, corpus) == 0
    kept = _kept(out)
    assert _packed_texts(out) == [t for *_, t in kept] and "more.jsonl" in {name for name, *_ in kept}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["modalities"]["text"]["input"] == 7 and stats["shards"]["num_documents"] == len(kept)
    assert (out / "tokenizer" / "tokenizer.json").stat().st_mtime_ns != before["tokenizer/tokenizer.json"][1]

    # the same number of documents, one of them changed: its new text is what the shards hold
    texts = [json.loads(line)["text"] for line in (corpus / "more.jsonl").open()]
    line = next(line for name, line, _ in kept if name == "more.jsonl")  # a kept one (1-based line)
    texts[line - 1] += "\n\nThis sentence was added after the first run of prep."
    _write_docs(corpus, texts, name="more.jsonl")
    assert _prep(out, corpus) == 0
    assert _packed_texts(out) == [t for *_, t in _kept(out)]
    assert any(t.endswith("after the first run of prep.") for t in _packed_texts(out))


def test_a_reused_tokenizer_packs_folders_that_train_together(corpus, prose, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert _prep(first, corpus) == 0
    other = tmp_path / "other_corpus"
    _write_docs(other, prose[3:6])
    given = tmp_path / "shared_tokenizer"
    shutil.copytree(first / "tokenizer", given)
    assert _prep(second, other, "--tokenizer", str(given)) == 0
    tokenizer_bytes = [(d / "tokenizer" / "tokenizer.json").read_bytes() for d in (first, second)]
    assert tokenizer_bytes[0] == tokenizer_bytes[1]
    assert _packed_texts(second) == [t for *_, t in _kept(second)]
    metas = [json.loads((d / "shards" / "meta.json").read_text()) for d in (first, second)]
    assert metas[0]["tokenizer_sha256"] == metas[1]["tokenizer_sha256"]
    from r1_ds.data import open_dataset

    ds, _ = open_dataset([str(first / "shards"), str(second / "shards")], seq_len=None, vocab_size=300)
    assert len(ds) == metas[0]["num_sequences"] + metas[1]["num_sequences"]

    # another tokenizer in the same folder: the copy, and the shards packed with it, are redone
    from data_prep.tokenizer_train import train_tokenizer

    shutil.rmtree(given)
    train_tokenizer(prose[3:6], given, vocab_size=280)
    assert _prep(second, other, "--tokenizer", str(given)) == 0
    assert (
        PackedShards(second / "shards").vocab_size
        == json.loads((second / "stats.json").read_text())["shards"]["vocab_size"]
        <= 280
    )
    assert _packed_texts(second) == [t for *_, t in _kept(second)]


def test_a_bad_tokenizer_folder_is_a_user_error(corpus, tmp_path, caplog):
    bad = tmp_path / "not_a_tokenizer"
    bad.mkdir()
    assert _prep(tmp_path / "out", corpus, "--tokenizer", str(bad)) == 2
    assert "--tokenizer" in caplog.text and "lacks tokenizer.json" in caplog.text and "OUT/tokenizer" in caplog.text
    (bad / "tokenizer.json").write_text("{garbage")
    (bad / "tokenizer_config.json").write_text("{}")
    caplog.clear()
    assert _prep(tmp_path / "out", corpus, "--tokenizer", str(bad)) == 2
    assert "the tokenizer does not load" in caplog.text


def test_damaged_shards_are_repaired_by_a_rerun(corpus, tmp_path):
    out = tmp_path / "out"
    assert _prep(out, corpus) == 0
    good = _files(out / "shards")
    shard = out / "shards" / "shard_00000.bin"
    rows = np.fromfile(shard, dtype=np.uint16)
    rows[: len(rows) // 2].astype(np.uint32).tofile(shard)  # another dtype at the same size
    assert _prep(out, corpus) == 0
    assert {k: v[0] for k, v in _files(out / "shards").items()} == {k: v[0] for k, v in good.items()}
    (out / "shards" / "meta.json").write_text('{"seq_len": 3')  # a broken meta.json
    assert _prep(out, corpus) == 0
    assert {k: v[0] for k, v in _files(out / "shards").items()} == {k: v[0] for k, v in good.items()}
    assert (out / "shards" / "shard_00001.bin").stat().st_mtime_ns == good["shard_00001.bin"][1]  # kept as it was


def test_empty_inputs_are_user_errors(tmp_path, caplog):
    empty_file = tmp_path / "empty.jsonl"
    empty_file.write_text("")
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    only_empty = tmp_path / "only_empty"
    only_empty.mkdir()
    (only_empty / "a.jsonl").write_text("\n")
    for path, rule in ((empty_file, "is empty"), (empty_dir, "is empty"), (only_empty, "no document was read")):
        caplog.clear()
        assert _prep(tmp_path / f"out_{path.name}", path) == 2, path
        assert f"--text {path}: {rule}" in caplog.text and "pass inputs with documents" in caplog.text
    out_file = tmp_path / "a_file"
    out_file.write_text("x")
    caplog.clear()
    assert main(["--out", str(out_file), "--sample"]) == 2
    assert "is a file, not a folder" in caplog.text
    caplog.clear()
    assert main(["--out", str(out_file / "sub"), "--sample"]) == 2
    assert "sub: cannot write there" in caplog.text and "choose a writable --out" in caplog.text


def test_an_unreadable_prep_config_is_a_user_error(corpus, tmp_path, caplog):
    out = tmp_path / "out"
    assert _prep(out, corpus) == 0
    config = json.loads((out / "prep_config.json").read_text())
    (out / "prep_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "tokenizer"}))
    assert _prep(out, corpus) == 0  # a setting added since the run, at its default: the same settings
    assert json.loads((out / "prep_config.json").read_text()) == config
    (out / "prep_config.json").write_text("{broken")
    assert _prep(out, corpus) == 2
    assert "prep_config.json is not readable JSON" in caplog.text and "--overwrite" in caplog.text


def test_tokenizer_trained_on_an_even_sample_of_the_kept_documents(corpus, tmp_path):
    from data_prep.prep import _evenly

    assert list(_evenly(iter(range(10)), 10, 3)) == [0, 3, 6] and list(_evenly(iter(range(4)), 4, 9)) == [0, 1, 2, 3]
    full, sampled = tmp_path / "full", tmp_path / "sampled"
    assert _prep(full, corpus) == 0 and _prep(sampled, corpus, "--tokenizer-sample", "1") == 0
    stats = json.loads((sampled / "stats.json").read_text())
    assert (
        stats["tokenizer"]["trained_on_documents"] == 1
        and "trained_on_documents" not in json.loads((full / "stats.json").read_text())["tokenizer"]
    )
    vocabs = [(o / "tokenizer" / "tokenizer.json").read_bytes() for o in (full, sampled)]
    assert vocabs[0] != vocabs[1]
    assert _packed_texts(sampled) == [t for *_, t in _kept(sampled)]  # every kept document packed all the same
