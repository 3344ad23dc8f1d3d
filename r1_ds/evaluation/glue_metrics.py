"""GLUE metrics (numpy only) and the benchmark's average.

Per task (GLUE paper / leaderboard): CoLA Matthews correlation; SST-2, QNLI, RTE, WNLI accuracy; MRPC
and QQP F1 (positive class 1) and accuracy; STS-B Pearson and Spearman; MNLI accuracy on matched and
mismatched. A task's score is the unweighted mean of its numbers (MNLI: of m and mm); the GLUE average
is the unweighted mean of the nine task scores. Everything is reported x100, as the leaderboard does.
"""

from __future__ import annotations

import numpy as np


def accuracy(pred, gold) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1_binary(pred, gold) -> float:
    pred, gold = np.asarray(pred) == 1, np.asarray(gold) == 1
    tp = float(np.sum(pred & gold))
    denom = float(np.sum(pred) + np.sum(gold))
    return 2 * tp / denom if denom else 0.0


def matthews_corrcoef(pred, gold) -> float:
    """Binary MCC; 0 when a row or column of the confusion matrix is empty (scikit-learn's convention)."""
    pred, gold = np.asarray(pred) == 1, np.asarray(gold) == 1
    tp, tn = float(np.sum(pred & gold)), float(np.sum(~pred & ~gold))
    fp, fn = float(np.sum(pred & ~gold)), float(np.sum(~pred & gold))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom else 0.0


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n with ties given their mean rank (as scipy.stats.rankdata's default)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x, y) -> float:
    return pearson(average_ranks(x), average_ranks(y))


# task -> its metrics, each (name, function(pred, gold))
TASK_METRICS = {
    "cola": [("mcc", matthews_corrcoef)],
    "sst2": [("accuracy", accuracy)],
    "mrpc": [("f1", f1_binary), ("accuracy", accuracy)],
    "stsb": [("pearson", pearson), ("spearman", spearman)],
    "qqp": [("f1", f1_binary), ("accuracy", accuracy)],
    "mnli": [("accuracy", accuracy)],  # per dev set: matched and mismatched
    "qnli": [("accuracy", accuracy)],
    "rte": [("accuracy", accuracy)],
    "wnli": [("accuracy", accuracy)],
}


def task_metrics(task: str, pred, gold) -> dict[str, float]:
    """{metric: value x100} of one task's dev set."""
    return {name: 100.0 * fn(pred, gold) for name, fn in TASK_METRICS[task]}


def task_score(metrics: dict[str, float]) -> float:
    """The task's score in the average: the mean of its numbers (MNLI: of its m and mm accuracy)."""
    return float(np.mean(list(metrics.values())))


def glue_average(scores: dict[str, float]) -> dict:
    """The GLUE average over the nine tasks (and the common eight-task one without WNLI), over the tasks
    present; `complete` says whether all nine (eight) were there."""
    nine = [t for t in TASK_METRICS if t in scores]
    eight = [t for t in nine if t != "wnli"]
    out = {
        "glue_average": float(np.mean([scores[t] for t in nine])) if nine else float("nan"),
        "glue_average_no_wnli": float(np.mean([scores[t] for t in eight])) if eight else float("nan"),
        "glue_average_tasks": nine,
        "glue_average_complete": len(nine) == len(TASK_METRICS),
    }
    return out
