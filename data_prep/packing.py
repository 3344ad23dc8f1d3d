"""Tokenize kept documents and pack them into fixed-length rows: the training shards ``r1-ds train`` reads.

Documents are concatenated in a fixed order, each followed by ``<|endoftext|>``, and the token stream is cut into
rows of ``seq_len``. The last row is padded with ``<|endoftext|>`` (pad = eos) so no text is lost. With several pack
tasks (``--pack-tasks``, data_prep/engine/pack.py), each task packs its own contiguous share of the kept parts as one
such stream into its own shards, and one meta.json lists them all in task order. Each shard ``shard_NNNNN.bin`` is
a raw little-endian C-order array (rows, seq_len) of uint16 (vocab <= 65536) or uint32, written atomically;
``meta.json`` (format in data_prep/shards.py: dtype, token range, checksums) is written last.
A resumed run re-tokenizes (deterministic) and skips shards whose file already holds exactly the bytes it would
write, so shards are neither duplicated nor lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.atomic import atomic_write_bytes, atomic_write_json
from data_prep.faults import maybe_crash
from data_prep.shards import DTYPES, META_FILE, PackedShards, dtype_name, format_meta, shard_record
from data_prep.tokenizer_train import EOS

log = logging.getLogger(__name__)


SHARDS_PER_TASK = 100_000  # pack task p names its shards from p x this, so tasks never collide


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.bin"


def pack_documents(
    texts: Iterable[str],
    tokenizer_dir: Path,
    shards_dir: Path,
    *,
    seq_len: int,
    shard_rows: int,
    batch_docs: int = 256,
) -> dict[str, Any]:
    """Write shards + meta.json into ``shards_dir``; returns the meta. Idempotent when meta.json already exists
    (the folder is then opened with its checks, so a damaged one raises instead of being returned)."""
    shards_dir = Path(shards_dir)
    if (shards_dir / META_FILE).is_file():
        return PackedShards(shards_dir).meta
    packed = pack_stream(
        texts, tokenizer_dir, shards_dir, seq_len=seq_len, shard_rows=shard_rows, batch_docs=batch_docs
    )
    return write_meta([packed], tokenizer_dir, shards_dir, seq_len=seq_len)


def write_meta(packed: list[dict[str, Any]], tokenizer_dir: Path, shards_dir: Path, *, seq_len: int) -> dict[str, Any]:
    """meta.json over the shards of one or more packed streams (``pack_stream`` results, in order), written last."""
    from tokenizers import Tokenizer

    tok_file = Path(tokenizer_dir) / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_file))
    shards = [s for p in packed for s in p["shards"]]
    meta = {
        **format_meta(
            shards,
            seq_len=seq_len,
            vocab_size=tok.get_vocab_size(),
            eos_token_id=tok.token_to_id(EOS),
            tokenizer_file=tok_file,
        ),
        **{k: sum(p[k] for p in packed) for k in ("num_documents", "num_tokens", "padding_tokens")},
        "separator": EOS,
    }
    atomic_write_json(Path(shards_dir) / META_FILE, meta)
    log.info(
        "packing: %d documents, %d tokens -> %d rows of %d in %d shards",
        meta["num_documents"],
        meta["num_tokens"],
        meta["num_sequences"],
        seq_len,
        len(shards),
    )
    return meta


def pack_stream(
    texts: Iterable[str],
    tokenizer_dir: Path,
    shards_dir: Path,
    *,
    seq_len: int,
    shard_rows: int,
    batch_docs: int = 256,
    first_shard: int = 0,
) -> dict[str, Any]:
    """Tokenize ``texts`` into one stream and write it as shards ``shard_<first_shard + k>.bin``; returns their
    records and counts (no meta.json). The last row is padded with ``<|endoftext|>``."""
    from tokenizers import Tokenizer

    shards_dir = Path(shards_dir)
    tok_file = Path(tokenizer_dir) / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_file))
    tok.encode_special_tokens = True  # a literal "<|endoftext|>" inside a document is text, not a separator
    eos = tok.token_to_id(EOS)
    dtype = DTYPES[dtype_name(tok.get_vocab_size())]
    rows_per_shard_tokens = shard_rows * seq_len

    shards: list[dict[str, Any]] = []
    buf: list[int] = []
    n_docs = n_tokens = 0

    def emit(tokens: list[int]) -> None:
        arr = np.asarray(tokens, dtype=dtype).reshape(-1, seq_len)  # (rows, seq_len)
        if len(shards) >= SHARDS_PER_TASK and first_shard:
            raise ValueError(f"a pack task wrote {SHARDS_PER_TASK} shards; use more pack tasks or larger shards")
        name = shard_name(first_shard + len(shards))
        path = shards_dir / name
        data = arr.tobytes(order="C")
        if not (path.is_file() and path.stat().st_size == arr.nbytes and path.read_bytes() == data):
            atomic_write_bytes(path, data)
        shards.append(shard_record(name, arr))
        maybe_crash("pack", len(shards))

    batch: list[str] = []

    def flush_batch() -> None:
        nonlocal n_docs, n_tokens
        for enc in tok.encode_batch(batch, add_special_tokens=False):
            buf.extend(enc.ids)
            buf.append(eos)
            n_tokens += len(enc.ids) + 1
        n_docs += len(batch)
        batch.clear()
        while len(buf) >= rows_per_shard_tokens:
            emit(buf[:rows_per_shard_tokens])
            del buf[:rows_per_shard_tokens]

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_docs:
            flush_batch()
    if batch:
        flush_batch()
    padding = (-len(buf)) % seq_len
    if buf:
        emit(buf + [eos] * padding)
    return {"shards": shards, "num_documents": n_docs, "num_tokens": n_tokens, "padding_tokens": padding}
