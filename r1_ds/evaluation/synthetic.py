"""Synthetic stand-ins, in the real file formats, for evaluation sets that ship in no package (GLUE,
Flickr30K). Their numbers measure the harness, not a model's language ability: every report names
them synthetic. The copies under data/ were written by these functions (tests check they still are).

  glue       every GLUE task folder in GLUE's TSV layout (CoLA/train.tsv ... MNLI/dev_mismatched.tsv);
             labels follow simple word rules (sentiment words, shared nouns, word order), so a model
             can learn them
  karpathy   a Flickr30K-shaped set: coloured shapes drawn by data_prep.shapes (the sample corpus's), 5 templated
             captions each, in the Karpathy-split JSON layout (dataset_flickr30k.json + images/)
"""

from __future__ import annotations

import csv
import io
import os
import random

from data_prep.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from data_prep.shapes import BACKGROUNDS, CAPTIONS, COLOURS, SHAPES, draw_shape, png_bytes, shape_ops

from .glue_data import TASKS

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

NOUNS = ("cat", "dog", "bird", "fish", "horse", "child", "farmer", "teacher", "river", "house", "garden", "train")
ADJS = ("small", "old", "quiet", "happy", "green", "tall", "young", "busy")
VERBS = ("sleeps", "runs", "waits", "sings", "stays", "moves")
GOOD, BAD = ("good", "great", "lovely", "fine"), ("bad", "awful", "dull", "poor")
FILLER = ("today", "again", "here", "there", "slowly", "really", "quite", "still")


def _sentence(rng: random.Random, noun: str, *extra: str) -> str:
    words = ["the", rng.choice(ADJS), noun, rng.choice(VERBS), *extra, rng.choice(FILLER)]
    return " ".join(words) + " ."


def _pair(rng: random.Random, same: bool) -> tuple[str, str]:
    a = rng.choice(NOUNS)
    b = a if same else rng.choice([n for n in NOUNS if n != a])
    return _sentence(rng, a), _sentence(rng, b)


def _rows(task: str, rng: random.Random, n: int) -> list[list[str]]:
    rows = []
    for i in range(n):
        y = i % 2 if task != "mnli" else i % 3
        if task == "cola":  # acceptable = the canonical word order; unacceptable = a shuffle of it
            words = _sentence(rng, rng.choice(NOUNS)).split()
            if not y:
                body = words[:-1]
                while body == words[:-1]:
                    rng.shuffle(body)
                words = body + ["."]
            rows.append(["syn0", str(y), "" if y else "*", " ".join(words)])
        elif task == "sst2":
            rows.append([_sentence(rng, rng.choice(NOUNS), "and", "is", rng.choice(GOOD if y else BAD)), str(y)])
        elif task == "stsb":
            shared = rng.randint(0, 3)
            a = rng.sample(NOUNS, 3)
            b = a[:shared] + rng.sample([x for x in NOUNS if x not in a], 3 - shared)
            rows.append(
                [
                    str(i),
                    "synthetic",
                    "syn",
                    "2026",
                    str(i),
                    "none",
                    "none",
                    " ".join(["the"] + a) + " .",
                    " ".join(["the"] + b) + " .",
                    f"{5.0 * shared / 3:.3f}",
                ]
            )
        elif task == "mnli":  # entailment: same noun; neutral: another noun; contradiction: "not"
            s1, s2 = _pair(rng, y != 1)
            if y == 2:
                s2 = s2.replace(" .", " not .")
            label = ("entailment", "neutral", "contradiction")[y]
            rows.append([str(i), str(i), f"{i}e", "synthetic", "", "", "", "", s1, s2, label, label])
        else:  # paraphrase / entailment / duplicate = the two sentences share their noun
            s1, s2 = _pair(rng, bool(y))
            if task == "mrpc":
                rows.append([str(y), str(2 * i), str(2 * i + 1), s1, s2])
            elif task == "qqp":
                rows.append(
                    [str(i), str(2 * i), str(2 * i + 1), s1.replace(" .", " ?"), s2.replace(" .", " ?"), str(y)]
                )
            elif task in ("qnli", "rte"):
                rows.append([str(i), s1, s2, "entailment" if y else "not_entailment"])
            else:  # wnli
                rows.append([str(i), s1, s2, str(y)])
    rng.shuffle(rows)
    return rows


HEADERS = {
    "cola": None,
    "sst2": ["sentence", "label"],
    "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "stsb": [
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
        "score",
    ],
    "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "mnli": [
        "index",
        "promptID",
        "pairID",
        "genre",
        "sentence1_binary_parse",
        "sentence2_binary_parse",
        "sentence1_parse",
        "sentence2_parse",
        "sentence1",
        "sentence2",
        "label1",
        "gold_label",
    ],
    "qnli": ["index", "question", "sentence", "label"],
    "rte": ["index", "sentence1", "sentence2", "label"],
    "wnli": ["index", "sentence1", "sentence2", "label"],
}


def _tsv(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n", escapechar="\\")
    if header:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_synthetic_glue(out: str, *, train: int = 60, dev: int = 30, seed: int = 0) -> str:
    """Every GLUE task folder, in GLUE's TSV layout, under `out`; returns `out`."""
    for task, spec in TASKS.items():
        rng = random.Random(f"{seed}-{task}")
        for stem, n in [("train", train)] + [(d, dev) for d in spec.dev]:
            atomic_write_text(os.path.join(out, spec.folder, f"{stem}.tsv"), _tsv(HEADERS[task], _rows(task, rng, n)))
    return out


def write_synthetic_karpathy(out: str, *, n_images: int = 40, seed: int = 0, test_images: int = 24) -> str:
    """A Flickr30K-shaped set under `out`: images/*.png and dataset_flickr30k.json (Karpathy layout:
    images[].filename, .split, .sentences[].raw/.tokens, .imgid, .sentids); the first `test_images`
    are the test split, the rest train. Returns the JSON's path."""
    rng = random.Random(seed)
    images, sentid = [], 0
    for i in range(n_images):
        shape, colour = SHAPES[i % len(SHAPES)], list(COLOURS)[(i // len(SHAPES) + i) % len(COLOURS)]
        bg = list(BACKGROUNDS)[(i // 3) % len(BACKGROUNDS)]
        name = f"shape_{i:04d}.png"
        atomic_write_bytes(
            os.path.join(out, "images", name),
            png_bytes(draw_shape(shape_ops(shape, rng), COLOURS[colour], BACKGROUNDS[bg])),
        )
        templates = list(CAPTIONS) + ["a picture of a {colour} {shape}"]  # five captions per image
        raws = [t.format(colour=colour, shape=shape, bg=bg) for t in templates]
        sents = [
            {"raw": r, "tokens": r.replace(",", "").split(), "imgid": i, "sentid": sentid + j}
            for j, r in enumerate(raws)
        ]
        images.append(
            {
                "filename": name,
                "imgid": i,
                "split": "test" if i < test_images else "train",
                "sentids": [s["sentid"] for s in sents],
                "sentences": sents,
            }
        )
        sentid += len(sents)
    path = os.path.join(out, "dataset_flickr30k.json")
    atomic_write_json(path, {"images": images, "dataset": "flickr30k (SYNTHETIC: r1_ds shapes)"})
    return path


def main() -> None:
    """Rewrite the shipped copies (python -m r1_ds.evaluation.synthetic)."""
    write_synthetic_glue(os.path.join(DATA_DIR, "glue"))
    write_synthetic_karpathy(os.path.join(DATA_DIR, "karpathy"))


if __name__ == "__main__":
    main()
