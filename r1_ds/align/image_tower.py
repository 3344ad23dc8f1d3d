"""The frozen image tower: an open_clip vision model, from a local checkpoint or random-init, and a cache of its
embeddings beside the triples.

Random init (no checkpoint) is for tests and the demo: the tower's features still differ by colour and layout,
so a trained head can align them, but they are no substitute for a pretrained tower (a warning says so).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings

import torch

from ..data import DataError

log = logging.getLogger("r1_ds.align")


class ImageTowerError(DataError):
    """The image tower cannot be built or its checkpoint does not fit it; the message names the file."""


def build_image_tower(model_name: str, checkpoint: str | None = None, *, image_size: int | None = None, seed: int = 0):
    """(visual module in eval mode without gradients, preprocess transform, output dim) of open_clip's
    `model_name`. checkpoint: a local file holding the CLIP model's state dict (keys "visual.*") or the vision
    tower's alone; None builds it random-init (seeded: every rank gets the same tower) with a warning."""
    import open_clip

    if model_name not in open_clip.list_models():
        raise ImageTowerError(
            f"align.image_tower={model_name!r} is not an open_clip model. Fix: pick one of "
            "open_clip.list_models(), e.g. 'ViT-B-32'."
        )
    torch.manual_seed(seed)
    kwargs = {"force_image_size": image_size} if image_size else {}
    model = open_clip.create_model(model_name, pretrained=None, **kwargs)
    visual = model.visual
    if checkpoint:
        _load_visual(visual, checkpoint, model_name)
    else:
        warnings.warn(
            f"image tower {model_name} is random-init (no align.image_tower_checkpoint): fine for tests and "
            "the demo, not for real alignment",
            stacklevel=2,
        )
    visual.eval().requires_grad_(False)
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    preprocess = open_clip.image_transform(size, is_train=False)
    return visual, preprocess, model.visual.output_dim


def _load_visual(visual: torch.nn.Module, checkpoint: str, model_name: str) -> None:
    if not os.path.isfile(checkpoint):
        raise ImageTowerError(
            f"align.image_tower_checkpoint={checkpoint!r} does not exist. Fix: give the path of a "
            f"local {model_name} checkpoint file, or leave it empty for a random-init tower."
        )
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets one message naming it
        raise ImageTowerError(
            f"align.image_tower_checkpoint={checkpoint!r} is not a readable torch checkpoint "
            f"({type(err).__name__}: {err}). Fix: pass an open_clip {model_name} state dict."
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ImageTowerError(
            f"align.image_tower_checkpoint={checkpoint!r} holds a {type(state).__name__}, not a "
            "state dict. Fix: save model.state_dict() of an open_clip model."
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    try:
        visual.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0:3]
        raise ImageTowerError(
            f"align.image_tower_checkpoint={checkpoint!r} does not fit the {model_name} image "
            f"tower: {' '.join(first)[:400]}. Fix: use a checkpoint of the same open_clip model "
            "(align.image_tower), with the same image size."
        ) from None


def tower_key(model_name: str, checkpoint: str | None, image_size: int | None, seed: int) -> str:
    """Cache key of a tower: its name, image size, and the checkpoint file (path, size, mtime) or the init seed."""
    ident = {"model": model_name, "image_size": image_size}
    if checkpoint:
        st = os.stat(checkpoint)
        ident.update(checkpoint=os.path.abspath(checkpoint), size=st.st_size, mtime=st.st_mtime_ns)
    else:
        ident["seed"] = seed
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def embeddings_cache(triples: str, model_name: str, checkpoint: str | None, image_size: int | None, seed: int) -> str:
    """The cache file of a tower's embeddings of the images of `triples` (a triples.jsonl): beside it."""
    key = tower_key(model_name, checkpoint, image_size, seed)
    return os.path.join(os.path.dirname(triples), "image_embeds", f"{model_name}-{key}.pt")


@torch.no_grad()
def embed_images(paths: list[str], visual, preprocess, *, batch_size: int = 32) -> tuple[torch.Tensor, dict]:
    """Embeddings (len(paths), dim) of the images; unreadable ones get a zero row and are returned in
    {path: reason} ("missing_image" or "unreadable_image")."""
    from PIL import Image

    out, failed, pending, pending_idx = [None] * len(paths), {}, [], []

    def flush():
        if pending:
            emb = visual(torch.stack(pending)).float()
            for i, e in zip(pending_idx, emb):
                out[i] = e
            pending.clear()
            pending_idx.clear()

    for i, path in enumerate(paths):
        if not os.path.isfile(path):
            failed[path] = "missing_image"
            continue
        try:
            with Image.open(path) as im:
                pending.append(preprocess(im.convert("RGB")))
            pending_idx.append(i)
        except Exception:  # noqa: BLE001 - a broken file is a dropped row, whatever PIL raises
            failed[path] = "unreadable_image"
            continue
        if len(pending) == batch_size:
            flush()
    flush()
    dim = next((e.shape[0] for e in out if e is not None), 1)
    return torch.stack([e if e is not None else torch.zeros(dim) for e in out]) if out else torch.zeros(0, dim), failed
