"""Read GLUE tasks from the files a user points at: the classic TSV folders (CoLA/train.tsv, ...,
MNLI/dev_matched.tsv) or `datasets` folders (save_to_disk, or the nyu-mll/glue parquet layout).
Labels come out as the `datasets` GLUE ids (MNLI: entailment 0, neutral 1, contradiction 2; QNLI/RTE:
entailment 0, not_entailment 1); STS-B's as floats in [0, 5]."""

from __future__ import annotations

import csv
import glob
import os
import sys
from dataclasses import dataclass

from .model_io import EvalInputError


@dataclass(frozen=True)
class TaskSpec:
    folder: str  # the TSV folder name
    tsv_text: tuple[str, ...]  # TSV header names of the text columns (CoLA: column indices, no header)
    tsv_label: str
    hf_text: tuple[str, ...]  # the `datasets` column names
    num_labels: int  # 1 = regression
    dev: tuple[str, ...] = ("dev",)  # dev sets: TSV stems; `datasets` splits are validation[_<suffix>]
    label_names: tuple[str, ...] = ()  # TSV label strings in id order (empty: the TSV holds the ids)


TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec("CoLA", ("3",), "1", ("sentence",), 2),
    "sst2": TaskSpec("SST-2", ("sentence",), "label", ("sentence",), 2),
    "mrpc": TaskSpec("MRPC", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"), 2),
    "stsb": TaskSpec("STS-B", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"), 1),
    "qqp": TaskSpec("QQP", ("question1", "question2"), "is_duplicate", ("question1", "question2"), 2),
    "mnli": TaskSpec(
        "MNLI",
        ("sentence1", "sentence2"),
        "gold_label",
        ("premise", "hypothesis"),
        3,
        dev=("dev_matched", "dev_mismatched"),
        label_names=("entailment", "neutral", "contradiction"),
    ),
    "qnli": TaskSpec(
        "QNLI",
        ("question", "sentence"),
        "label",
        ("question", "sentence"),
        2,
        label_names=("entailment", "not_entailment"),
    ),
    "rte": TaskSpec(
        "RTE",
        ("sentence1", "sentence2"),
        "label",
        ("sentence1", "sentence2"),
        2,
        label_names=("entailment", "not_entailment"),
    ),
    "wnli": TaskSpec("WNLI", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), 2),
}

Example = tuple[tuple[str, ...], float]  # (texts, label)


def _label(spec: TaskSpec, raw: str, where: str) -> float:
    if spec.num_labels == 1:
        return float(raw)
    if spec.label_names:
        if raw not in spec.label_names:
            raise EvalInputError(
                f"{where}: label {raw!r} is not one of {list(spec.label_names)}. Fix: use the GLUE TSV files unchanged."
            )
        return float(spec.label_names.index(raw))
    return float(int(raw))


def read_tsv(path: str, spec: TaskSpec) -> list[Example]:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if spec.folder == "CoLA":  # no header: source, label, original label, sentence
        return [((r[3],), _label(spec, r[1], path)) for r in rows if len(r) >= 4]
    if not rows:
        raise EvalInputError(f"{path} is empty. Fix: point --glue-dir at the unpacked GLUE data.")
    header, out = rows[0], []
    missing = [c for c in (*spec.tsv_text, spec.tsv_label) if c not in header]
    if missing:
        raise EvalInputError(
            f"{path}: the header lacks {missing} (it has {header[:8]}). Fix: use GLUE's TSV files "
            "unchanged (their first line is the header)."
        )
    cols = [header.index(c) for c in spec.tsv_text]
    lab = header.index(spec.tsv_label)
    for i, r in enumerate(rows[1:], start=2):
        if len(r) <= max(*cols, lab) or r[lab] == "":
            continue  # GLUE's own files hold a few malformed lines (QQP); readers skip them
        out.append((tuple(r[c] for c in cols), _label(spec, r[lab], f"{path}:{i}")))
    return out


def _hf_splits(folder: str):
    """{split: Dataset} of a save_to_disk folder or a parquet folder; None when `folder` is neither."""
    if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
        from datasets import load_from_disk

        return dict(load_from_disk(folder))
    parquet = sorted(glob.glob(os.path.join(folder, "*.parquet")))
    if parquet:
        from datasets import load_dataset

        splits = sorted({os.path.basename(p).split("-")[0] for p in parquet})
        files = {s: [p for p in parquet if os.path.basename(p).split("-")[0] == s] for s in splits}
        return dict(load_dataset("parquet", data_files=files))
    return None


def _from_hf(ds, spec: TaskSpec, where: str) -> list[Example]:
    missing = [c for c in (*spec.hf_text, "label") if c not in ds.column_names]
    if missing:
        raise EvalInputError(
            f"{where}: columns {missing} are missing (it has {ds.column_names}). Fix: save the "
            "nyu-mll/glue configuration of this task unchanged."
        )
    return [(tuple(row[c] for c in spec.hf_text), float(row["label"])) for row in ds if row["label"] != -1]


def find_tasks(glue_dir: str) -> list[str]:
    """The GLUE tasks present under `glue_dir`, in benchmark order."""
    found = []
    for name, spec in TASKS.items():
        if any(os.path.isdir(os.path.join(glue_dir, d)) for d in (spec.folder, name)):
            found.append(name)
    return found


def load_task(glue_dir: str, name: str) -> tuple[list[Example], dict[str, list[Example]]]:
    """(train examples, {dev set name: examples}) of one task."""
    spec = TASKS[name]
    tsv_dir, hf_dir = os.path.join(glue_dir, spec.folder), os.path.join(glue_dir, name)
    if os.path.isfile(os.path.join(tsv_dir, "train.tsv")):
        devs = {}
        for stem in spec.dev:
            path = os.path.join(tsv_dir, f"{stem}.tsv")
            if not os.path.isfile(path):
                raise EvalInputError(
                    f"{path} is missing. Fix: GLUE's {spec.folder} folder holds train.tsv and "
                    f"{', '.join(s + '.tsv' for s in spec.dev)}."
                )
            devs[stem] = read_tsv(path, spec)
        return read_tsv(os.path.join(tsv_dir, "train.tsv"), spec), devs
    splits = _hf_splits(hf_dir) if os.path.isdir(hf_dir) else None
    if splits is None:
        raise EvalInputError(
            f"no {name} data under {glue_dir}: expected {spec.folder}/train.tsv (GLUE's TSV layout) "
            f"or {name}/ saved with `datasets` (save_to_disk or parquet files). Fix: point "
            "--glue-dir at the folder that holds the task folders."
        )
    dev_splits = ["validation"] if len(spec.dev) == 1 else ["validation_matched", "validation_mismatched"]
    absent = [s for s in ["train", *dev_splits] if s not in splits]
    if absent:
        raise EvalInputError(f"{hf_dir} lacks the splits {absent} (it has {sorted(splits)}).")
    devs = {stem: _from_hf(splits[s], spec, f"{hf_dir}[{s}]") for stem, s in zip(spec.dev, dev_splits)}
    return _from_hf(splits["train"], spec, f"{hf_dir}[train]"), devs
