"""Language identification with py3langid: a naive Bayes model over byte n-grams (97 languages, ISO 639-1 codes)
whose weights ship inside the package (``py3langid/data/model.npz.xz``), so nothing is downloaded at run time.

``model`` is ``"py3langid"`` (the packaged model) or a path to a model file in the same format (``langid.py``'s
training tools write one); probabilities are normalised, so the score lies in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_prep.errors import PrepError

PACKAGED = "py3langid"
# The model scores byte n-grams of the whole input; the first few thousand characters decide the language of a
# web document as well as the whole text does, at a fraction of the cost of very long documents.
DEFAULT_MAX_CHARS = 2000
# Loaded models by spec, per process: the engine hands every task a fresh copy of its filters, and a worker process
# runs many tasks; loading takes about 0.5 s.
_LOADED: dict[str, Any] = {}


def check_model(spec: str) -> None:
    """Fail before any work when the model is neither the packaged one nor an existing file."""
    if spec != PACKAGED and not Path(spec).is_file():
        raise PrepError(
            f"--langid-model {spec}: not a file; pass 'py3langid' (the model inside the package) or the path of "
            "a langid.py model file"
        )


class LanguageIdentifier:
    """``identify(text) -> (language, score)``; the model loads on first use (about 0.5 s)."""

    def __init__(self, model: str = PACKAGED, *, max_chars: int = DEFAULT_MAX_CHARS):
        self.model = model
        self.max_chars = max_chars
        self._ident: Any = None

    def _load(self) -> Any:
        try:
            from py3langid.langid import MODEL_FILE
            from py3langid.langid import LanguageIdentifier as _Identifier
        except ImportError as exc:
            raise PrepError(
                "language identification: package py3langid is not installed; pip install py3langid "
                "(a dependency of r1_ds), or turn the stage off with --no-langid"
            ) from exc
        check_model(self.model)
        path = MODEL_FILE if self.model == PACKAGED else str(Path(self.model).absolute())
        return _Identifier.from_model_file(path, norm_probs=True)

    def identify(self, text: str) -> tuple[str, float]:
        if self._ident is None:
            if self.model not in _LOADED:
                _LOADED[self.model] = self._load()
            self._ident = _LOADED[self.model]
        language, score = self._ident.classify(text[: self.max_chars])
        return str(language), float(score)

    def __getstate__(self) -> dict[str, Any]:
        # Sent to worker processes without the loaded model: each worker loads its own copy once.
        return {"model": self.model, "max_chars": self.max_chars, "_ident": None}
