"""GLUE: fine-tune one copy of the exported model per task (R1ForSequenceClassification: the decoder
plus a linear head on the last real token) on the task's train set and score its dev sets."""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import torch

from ..align.data import pad_right
from .glue_data import TASKS, Example, find_tasks, load_task
from .glue_metrics import glue_average, task_metrics, task_score
from .model_io import EvalInputError

log = logging.getLogger("r1_ds.evaluation.glue")

SYNTHETIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "glue")


def _encode(tokenizer, examples: list[Example], max_len: int) -> list[list[int]]:
    """Token ids of each example; the texts of a pair are joined by the end-of-text token (or a
    newline), and each row is cut to `max_len`."""
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else tokenizer("\n").input_ids
    rows = []
    for texts, _ in examples:
        ids: list[int] = []
        for i, t in enumerate(texts):
            ids += (sep if i else []) + tokenizer(t, add_special_tokens=False).input_ids
        rows.append(ids[:max_len] or sep)
    return rows


def _batch(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention_mask), both (B, T), on `device`: the head reads the last real token."""
    ids, mask = pad_right(rows, pad)
    return ids.to(device), mask.to(device)


@torch.no_grad()
def predict(model, rows: list[list[int]], *, pad: int, batch_size: int, regression: bool) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        ids, mask = _batch(rows[i : i + batch_size], pad, next(model.parameters()).device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        out.append(logits[:, 0] if regression else logits.argmax(-1))
    return torch.cat(out).cpu().numpy()


def finetune_task(
    model_dir: str,
    tokenizer,
    name: str,
    train: list[Example],
    devs: dict[str, list[Example]],
    *,
    epochs: float,
    lr: float,
    batch_size: int,
    max_len: int,
    device: str,
    seed: int,
) -> dict:
    """Fine-tune a fresh copy on `train`; {dev set: metrics x100} plus the task's score."""
    from r1_ds.model import R1ForSequenceClassification

    spec = TASKS[name]
    regression = spec.num_labels == 1
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head's "newly initialized" report is expected here
    try:
        model = R1ForSequenceClassification.from_pretrained(
            model_dir, num_labels=spec.num_labels, dtype=torch.float32
        ).to(device)
    finally:
        hf_logging.set_verbosity(verbosity)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = _encode(tokenizer, train, max_len)
    labels = torch.tensor([y for _, y in train], dtype=torch.float32 if regression else torch.long)
    steps = max(1, math.ceil(epochs * len(rows) / batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps)
    )
    rng = np.random.default_rng(seed)
    order: list[int] = []
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.permutation(len(rows)).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        ids, mask = _batch([rows[i] for i in idx], pad, device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels[idx].to(device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    result: dict = {
        "train_examples": len(rows),
        "steps": steps,
        "final_train_loss": float(loss.detach()),
        "train_seconds": time.perf_counter() - t0,
    }
    metrics: dict[str, float] = {}
    for stem, dev in devs.items():
        pred = predict(
            model, _encode(tokenizer, dev, max_len), pad=pad, batch_size=batch_size * 2, regression=regression
        )
        m = task_metrics(name, pred, np.array([y for _, y in dev]))
        suffix = {"dev_matched": "_m", "dev_mismatched": "_mm"}.get(stem, "")
        metrics.update({f"{k}{suffix}": v for k, v in m.items()})
        result[f"{stem}_examples"] = len(dev)
    return {**metrics, "score": task_score(metrics), **result}


def evaluate_glue(
    model_dir: str,
    glue_dir: str,
    *,
    tasks: list[str] | None = None,
    epochs: float = 3.0,
    lr: float = 1e-4,
    batch_size: int = 16,
    max_len: int = 128,
    max_train: int | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Fine-tune and score each task; the per-task metrics and the GLUE average (x100)."""
    from transformers import AutoTokenizer

    synthetic = glue_dir == "synthetic"
    glue_dir = SYNTHETIC_DIR if synthetic else glue_dir
    if not os.path.isdir(glue_dir):
        raise EvalInputError(
            f"--glue-dir {glue_dir!r} is not a folder. Fix: pass the folder holding CoLA/, SST-2/ "
            "... (GLUE's TSV layout) or the `datasets` task folders, or `synthetic`."
        )
    present = find_tasks(glue_dir)
    tasks = tasks or present
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise EvalInputError(f"--tasks {unknown} unknown; choose from {list(TASKS)}")
    if not tasks:
        folders = ", ".join(s.folder for s in TASKS.values())
        raise EvalInputError(
            f"--glue-dir {glue_dir} holds no GLUE task folder ({folders}). Fix: point it at the unpacked GLUE data."
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    per_task = {}
    for name in tasks:
        train, devs = load_task(glue_dir, name)
        if max_train is not None:
            train = train[:max_train]
        if not train:
            raise EvalInputError(f"{name}: the train set is empty under {glue_dir}")
        per_task[name] = finetune_task(
            model_dir,
            tokenizer,
            name,
            train,
            devs,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            max_len=max_len,
            device=device,
            seed=seed,
        )
        log.info("glue %s: %s", name, {k: round(v, 2) for k, v in per_task[name].items() if isinstance(v, float)})
    return {
        "task": "glue",
        "synthetic": synthetic,
        "data": os.path.abspath(glue_dir),
        "epochs": epochs,
        "lr": lr,
        "tasks": per_task,
        **glue_average({t: r["score"] for t, r in per_task.items()}),
    }
