"""Batched sampling for HumanEval: batches of equal-length prompts, the same completions as one prompt
at a time (greedy), n samples per prompt, Codex's truncation."""

from r1_ds.evaluation.generation import batches_of_equal_length, generate_completions, truncate_at_stops


def test_batches_group_equal_lengths_and_cover_every_request_once():
    batches = batches_of_equal_length([5, 3, 5, 3, 7], repeats=3, batch_size=4)
    flat = sorted(r for b in batches for r in b)
    assert flat == list(range(15)) and all(len(b) <= 4 for b in batches)
    lengths = [5, 3, 5, 3, 7]
    assert all(len({lengths[r // 3] for r in b}) == 1 for b in batches)


def test_truncation_at_the_first_stop_sequence():
    assert truncate_at_stops("    return x\n\ndef g():\n    pass", ("\ndef", "\nclass")) == "    return x\n"
    assert truncate_at_stops("    return x", ("\ndef",)) == "    return x"


def test_batched_greedy_equals_one_prompt_at_a_time_and_sampling_gives_n():
    from r1_ds.evaluation.model_io import load_causal_lm
    from tests.test_eval_cli import tiny_export

    model, tok = load_causal_lm(tiny_export())
    prompts = ["def add(a, b):\n", "def mul(a, b):\n", "def f(x):\n", "def g(y):\n", "import math\n"]
    assert len({len(tok(p).input_ids) for p in prompts}) < len(prompts)  # some share a batch
    batched = generate_completions(model, tok, prompts, n=2, max_new_tokens=6, batch_size=8)
    single = [generate_completions(model, tok, [p], n=1, max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == [s * 2 for s in single]
    sampled = generate_completions(model, tok, prompts[:2], n=3, temperature=1.0, max_new_tokens=6, batch_size=4)
    assert [len(s) for s in sampled] == [3, 3] and len(set(sampled[0])) > 1  # random tiny model: draws differ
