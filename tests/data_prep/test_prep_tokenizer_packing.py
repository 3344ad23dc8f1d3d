"""Tokenizer loads through AutoTokenizer; packed shards follow the layout contract and decode back to the input."""

import json

import numpy as np
import pytest

from data_prep.errors import PrepError
from data_prep.packing import pack_documents
from data_prep.shards import PackedShards
from data_prep.tokenizer_train import EOS, train_tokenizer


@pytest.fixture(scope="module")
def corpus(prose):
    docs = list(prose) + [
        "def f(x):\n    return x  # émoji 🐍 and tabs\t\n",
        "A literal <|endoftext|> inside text.",
        "  ",
    ]
    return docs


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    info = train_tokenizer(corpus, out, vocab_size=600, model_max_length=64)
    assert info["eos_token_id"] == 0 and info["vocab_size"] <= 600
    return out


def test_auto_tokenizer_loads(tok_dir, corpus):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert tok.eos_token == tok.pad_token == EOS and tok.eos_token_id == 0
    for text in corpus:
        assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless


def test_pack_layout_and_roundtrip(tok_dir, corpus, tmp_path):
    meta = pack_documents(corpus, tok_dir, tmp_path / "shards", seq_len=16, shard_rows=8)
    assert {"seq_len", "dtype", "vocab_size", "eos_token_id", "num_sequences", "shards", "tokenizer"} <= set(meta)
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == "../tokenizer" and meta["seq_len"] == 16
    assert json.loads((tmp_path / "shards" / "meta.json").read_text()) == meta
    assert len(meta["shards"]) > 2 and all(s["num_sequences"] == 8 for s in meta["shards"][:-1])
    # raw files are (rows, seq_len) little-endian arrays readable with numpy.memmap
    rows = np.concatenate(
        [
            np.memmap(tmp_path / "shards" / s["file"], dtype="<u2", mode="r").reshape(s["num_sequences"], 16)
            for s in meta["shards"]
        ]
    )
    ps = PackedShards(tmp_path / "shards")
    assert len(ps) == meta["num_sequences"] == rows.shape[0]
    assert all((ps[i] == rows[i]).all() for i in range(len(ps)))
    assert ps[-1].dtype == np.int64 and ps[-1].shape == (16,)
    # decode: documents separated by eos, then only eos padding
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    stream = rows.reshape(-1).tolist()
    n_real = meta["num_tokens"]
    assert set(stream[n_real:]) <= {0} and len(stream) - n_real == meta["padding_tokens"] < 16
    pieces, cur = [], []
    for t in stream[:n_real]:
        if t == 0:
            pieces.append(tok.decode(cur, skip_special_tokens=False))
            cur = []
        else:
            cur.append(t)
    assert pieces == corpus  # including the literal "<|endoftext|>" text, which is not a separator
    with pytest.raises(IndexError):
        ps[len(ps)]


def test_pack_resume_rewrites_only_missing(tok_dir, corpus, tmp_path):
    ref = pack_documents(corpus, tok_dir, tmp_path / "ref", seq_len=16, shard_rows=8)
    out = tmp_path / "run"
    pack_documents(corpus, tok_dir, out, seq_len=16, shard_rows=8)
    (out / "meta.json").unlink()
    (out / "shard_00001.bin").unlink()
    mtime0 = (out / "shard_00000.bin").stat().st_mtime_ns
    assert pack_documents(corpus, tok_dir, out, seq_len=16, shard_rows=8) == ref
    assert (out / "shard_00000.bin").stat().st_mtime_ns == mtime0  # complete shard kept, not rewritten
    for s in ref["shards"]:
        assert (out / s["file"]).read_bytes() == (tmp_path / "ref" / s["file"]).read_bytes()


def test_packed_shards_errors(tok_dir, corpus, tmp_path):
    with pytest.raises(PrepError, match="no meta.json"):
        PackedShards(tmp_path)
    pack_documents(corpus, tok_dir, tmp_path / "s", seq_len=16, shard_rows=8)
    with open(tmp_path / "s" / "shard_00000.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(PrepError, match="shard_00000.bin: expected 256 bytes"):
        PackedShards(tmp_path / "s")


def test_vocab_too_small(tmp_path):
    with pytest.raises(ValueError, match="at least 257"):
        train_tokenizer(["x"], tmp_path / "t", vocab_size=100)
