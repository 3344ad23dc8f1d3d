"""Train a byte-level BPE tokenizer with HF ``tokenizers`` and save it so ``AutoTokenizer.from_pretrained`` loads it.

Byte-level means every string round-trips exactly (no unknown token). ``<|endoftext|>`` is the only special
token: the document separator in packed shards, and eos / bos / pad for transformers.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

from data_prep.atomic import atomic_dir
from data_prep.errors import PrepError

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
MIN_VOCAB = 256 + 1  # the byte alphabet plus the special token


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    *,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    model_max_length: int = 2048,
) -> dict:
    """Train on ``texts`` and write ``out_dir`` (tokenizer.json, tokenizer_config.json, special_tokens_map.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size={vocab_size}: must be at least {MIN_VOCAB} (256 bytes + {EOS})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    special = {"bos_token": EOS, "eos_token": EOS, "pad_token": EOS}
    with atomic_dir(out_dir) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    info = {"vocab_size": tok.get_vocab_size(), "eos_token": EOS, "eos_token_id": tok.token_to_id(EOS)}
    log.info("tokenizer: byte-level BPE, vocab %d, saved to %s", info["vocab_size"], out_dir)
    return info


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_tokenizer_dir(path: str | Path, flag: str = "--tokenizer") -> None:
    """A tokenizer folder prep can pack with: tokenizer.json that ``tokenizers`` loads, with the ``<|endoftext|>``
    separator, and a tokenizer_config.json (what ``AutoTokenizer`` reads); PrepError naming what is wrong."""
    from tokenizers import Tokenizer

    path = Path(path)
    fix = "pass the tokenizer folder of an earlier prep run (OUT/tokenizer), or drop the flag to train one"
    if not path.is_dir():
        raise PrepError(f"{flag} {path}: not a folder; {fix}")
    missing = [n for n in TOKENIZER_FILES if not (path / n).is_file()]
    if missing:
        raise PrepError(f"{flag} {path}: lacks {', '.join(missing)}, so it is not a tokenizer folder; {fix}")
    try:
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except Exception as err:  # noqa: BLE001 - any parse failure is the same user error
        raise PrepError(f"{flag} {path}: the tokenizer does not load ({err}); {fix}") from None
    if tok.token_to_id(EOS) is None:
        raise PrepError(f"{flag} {path}: the vocabulary has no {EOS} token (the document separator of shards); {fix}")


def copy_tokenizer(src: str | Path, out_dir: str | Path) -> None:
    """Copy a checked tokenizer folder's files into ``out_dir`` (atomically), so the run's output stands alone."""
    with atomic_dir(out_dir) as tmp:
        for f in sorted(Path(src).iterdir()):
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
    log.info("tokenizer: copied from %s to %s", src, out_dir)
