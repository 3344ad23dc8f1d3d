"""Passkey retrieval (needle in a haystack), as in Mohtashami & Jaggi 2023 and the long-context literature.

An example is `length` tokens: an instruction, repeated filler text with a sentence holding a random 5-digit key
at a random depth, then the question; the answer (the key) ends the sequence:

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. ...
    The grass is green. The sky is blue. ... The pass key is 48213. Remember it. 48213 is the pass key. ...
    The grass is green. ... What is the pass key? The pass key is 48213

The filler repeats, so nothing near the question says what the key is: only attention that reaches back to the
needle can answer. Each piece is tokenized on its own and the ids are concatenated, so the answer's tokens are
known exactly; an example is a pure function of (tokenizer, length, seed). Accuracy is exact match of the greedy
answer: every answer token is the argmax at its position, given the question and the answer so far (teacher
forcing), which for a fixed-length answer is what greedy decoding produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

INTRO = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it."
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
ANSWER = " {key}"


@dataclass(frozen=True)
class PasskeyExample:
    input_ids: list[int]  # length tokens, the answer last
    answer_start: int  # index of the answer's first token
    key: str  # the 5-digit key
    needle_start: int  # index of the needle's first token
    depth: float  # needle_start / length


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def make_example(tokenizer, length: int, seed: int) -> PasskeyExample:
    """One example of exactly `length` tokens; the key and the needle's depth (5%-95% of the filler, on a filler
    sentence boundary) drawn from `seed`."""
    rng = np.random.default_rng(seed)
    key = str(int(rng.integers(10000, 100000)))
    intro, unit, question = _ids(tokenizer, INTRO), _ids(tokenizer, FILLER), _ids(tokenizer, QUESTION)
    needle, answer = _ids(tokenizer, NEEDLE.format(key=key)), _ids(tokenizer, ANSWER.format(key=key))
    n_filler = length - len(intro) - len(needle) - len(question) - len(answer)
    if n_filler < 2 * len(unit):
        raise ValueError(
            f"passkey length {length} is too short: the fixed parts take {length - n_filler} tokens and "
            f"the filler needs at least {2 * len(unit)}. Fix: use a length of at least "
            f"{length - n_filler + 2 * len(unit)}."
        )
    filler = (unit * (n_filler // len(unit) + 1))[:n_filler]
    depth = float(rng.uniform(0.05, 0.95))
    cut = min(n_filler, round(depth * n_filler / len(unit)) * len(unit))  # on a sentence boundary
    ids = intro + filler[:cut] + needle + filler[cut:] + question + answer
    assert len(ids) == length
    return PasskeyExample(
        input_ids=ids,
        answer_start=length - len(answer),
        key=key,
        needle_start=len(intro) + cut,
        depth=(len(intro) + cut) / length,
    )


def batch(examples: list[PasskeyExample], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) (B, T): labels are -100 except on the answer tokens (the loss trains retrieval only)."""
    ids = torch.tensor([e.input_ids for e in examples], dtype=torch.long, device=device)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(examples):
        labels[i, e.answer_start :] = ids[i, e.answer_start :]
    return ids, labels


@torch.no_grad()
def answers_correct(model, examples: list[PasskeyExample], device=None) -> list[bool]:
    """Per example: the greedy answer equals the key (every answer token is the argmax at its position)."""
    ids, _ = batch(examples, device)
    # logits only from the first answer's predicting position on: a (B, T, V) tensor at 32k would be gigabytes
    first = ids.shape[1] - (min(e.answer_start for e in examples) - 1)
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=first).logits  # position t predicts t + 1
    pred = logits[:, :-1].argmax(-1)  # pred[:, j] predicts token ids[:, offset + j + 1]
    offset = ids.shape[1] - first
    out = []
    for i, e in enumerate(examples):
        s = e.answer_start - offset
        out.append(bool((pred[i, s - 1 :] == ids[i, e.answer_start :]).all()))
    return out
