"""Batched sampling for HumanEval: prompts of any length share a batch, padded on the left; batched greedy
completions equal one prompt at a time; n samples per prompt; Codex's truncation."""

from r1_ds.evaluation.generation import (
    equal_length_batches,
    generate_completions,
    length_sorted_batches,
    pad_left,
    truncate_at_stops,
)


def test_batches_cover_every_request_once_longest_prompts_first():
    lengths = [5, 3, 5, 3, 7]
    batches = length_sorted_batches(lengths, repeats=3, batch_size=4)
    flat = [r for b in batches for r in b]
    assert sorted(flat) == list(range(15)) and all(len(b) <= 4 for b in batches)
    assert [lengths[r // 3] for r in flat] == sorted((n for n in lengths for _ in range(3)), reverse=True)
    assert any(len({lengths[r // 3] for r in b}) > 1 for b in batches)  # prompts of different lengths share one


def test_left_padding_right_aligns_each_row():
    ids, mask = pad_left([[7, 8, 9], [5]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_truncation_at_the_first_stop_sequence():
    assert truncate_at_stops("    return x\n\ndef g():\n    pass", ("\ndef", "\nclass")) == "    return x\n"
    assert truncate_at_stops("    return x", ("\ndef",)) == "    return x"


def test_batched_greedy_equals_one_prompt_at_a_time_and_sampling_gives_n():
    from r1_ds.evaluation.model_io import load_causal_lm
    from tests.test_eval_cli import tiny_export

    model, tok = load_causal_lm(tiny_export())
    prompts = [
        "def add(a, b):\n",
        "def mul(a, b):\n",
        "def f(x):\n",
        "def g(y):\n",
        "import math\n",
        'def longest_common_prefix(words: list[str]) -> str:\n    """The prefix all words share."""\n',
    ]
    lengths = [len(tok(p, add_special_tokens=False).input_ids) for p in prompts]
    assert len(set(lengths)) > 2 and max(lengths) > 2 * min(lengths)  # one batch pads some rows a lot
    batched = generate_completions(model, tok, prompts, n=2, max_new_tokens=8, batch_size=16)
    single = [generate_completions(model, tok, [p], n=1, max_new_tokens=8, batch_size=1)[0] for p in prompts]
    assert batched == [s * 2 for s in single]
    sampled = generate_completions(model, tok, prompts[:2], n=3, temperature=1.0, max_new_tokens=6, batch_size=4)
    assert [len(s) for s in sampled] == [3, 3] and len(set(sampled[0])) > 1  # random tiny model: draws differ


def test_stopping_at_the_stop_sequences_changes_no_completion_and_ends_batches_early():
    from r1_ds.evaluation.model_io import load_causal_lm
    from tests.test_eval_cli import tiny_export

    model, tok = load_causal_lm(tiny_export())
    widths = []

    class Recording:  # the model, recording how many tokens each generate() call produced
        config = model.config

        def parameters(self):
            return model.parameters()

        def generate(self, ids, **kwargs):
            out = model.generate(ids, **kwargs)
            widths.append(out.shape[1] - ids.shape[1])
            return out

    prompts = ["def add(a, b):\n", "def mul(a, b):\n", "import math\n", "def f(x):\n    return"]
    stops = ("e", "t", "(")  # frequent in a random model's text, so rows stop at different steps
    full = generate_completions(
        Recording(), tok, prompts, max_new_tokens=40, batch_size=2, stops=stops, stop_early=False
    )
    assert widths == [40, 40]
    early = generate_completions(Recording(), tok, prompts, max_new_tokens=40, batch_size=2, stops=stops)
    assert early == full
    assert max(widths[2:]) < 40, widths  # both batches ended once every row held a stop
    assert any(c[0] for c in full) and all(not any(s in c[0] for s in stops) for c in full)


def test_equal_length_batches_hold_one_prompt_length_and_give_the_padded_completions():
    lengths = [5, 3, 5, 3, 7, 5]
    batches = equal_length_batches(lengths, repeats=2, batch_size=4)
    flat = [r for b in batches for r in b]
    assert sorted(flat) == list(range(12)) and all(len(b) <= 4 for b in batches)
    assert all(len({lengths[r // 2] for r in b}) == 1 for b in batches)
    assert [lengths[b[0] // 2] for b in batches] == [7, 5, 5, 3]  # longest first; 5 x 3 prompts x 2 split in two

    from r1_ds.evaluation.model_io import load_causal_lm
    from tests.test_eval_cli import tiny_export

    model, tok = load_causal_lm(tiny_export())
    prompts = ["def add(a, b):\n", "def mul(a, b):\n", "import math\n", "def f(x):\n    return"]
    mixed = generate_completions(model, tok, prompts, n=2, max_new_tokens=8, batch_size=8)
    assert generate_completions(model, tok, prompts, n=2, max_new_tokens=8, batch_size=8, mixed_lengths=False) == mixed
