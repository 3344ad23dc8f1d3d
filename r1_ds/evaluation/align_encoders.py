"""The encoders of an alignment run (docs/alignment.md) as retrieval embedders.

An alignment run writes OUTPUT_DIR/align/lm (the trained R1 model), OUTPUT_DIR/align/heads (AlignHeads) and
OUTPUT_DIR/train_config.json; the frozen image tower is not saved, so it is rebuilt from the run's settings
(align.image_tower, .image_tower_checkpoint, .image_size and the seed of a random-init tower). Text and code go
through r1_ds/align exactly as in training: tokenised and cut to align.text_len / code_len, right-padded, pooled
and projected by AlignModel.embed_tokens; images through the tower and AlignHeads.project.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from .model_io import Embed, EvalInputError


@dataclass
class AlignEncoders:
    """images: image paths -> (N, D); texts / codes: strings -> (N, D); unit-norm rows of one shared space."""

    images: Embed
    texts: Embed
    codes: Embed
    description: str


def find_run(path: str) -> str:
    """The run's output folder from `path`: that folder (holding align/heads) or its align/ subfolder."""
    for run in (path, os.path.dirname(os.path.abspath(path))):
        if os.path.isdir(os.path.join(run, "align", "heads")) and os.path.isdir(os.path.join(run, "align", "lm")):
            if not os.path.isfile(os.path.join(run, "train_config.json")):
                raise EvalInputError(
                    f"--align {path!r}: {run} has no train_config.json, which names the run's image "
                    "tower and tokenizer. Fix: pass the output folder of an alignment run."
                )
            return run
    raise EvalInputError(
        f"--align {path!r} holds no align/lm and align/heads. Fix: pass the output folder of an "
        "alignment run (`r1-ds train --set align.objective=align ...`), which writes them at its end."
    )


def _tokenizer(settings: dict, tokenizer: str | None):
    from r1_ds.align.trainer import load_tokenizer, triples_file
    from r1_ds.data import DataError

    if tokenizer:
        if not os.path.isdir(tokenizer):
            raise EvalInputError(
                f"--tokenizer {tokenizer!r} is not a folder. Fix: pass the tokenizer folder the "
                "alignment run used (`r1-ds prep`'s OUT/tokenizer)."
            )
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer)
    try:
        return load_tokenizer(settings.get("tokenizer"), triples_file(settings.get("triples") or ""))
    except DataError as err:  # paths of the run's config, relative to where it was launched
        raise EvalInputError(f"the alignment run's tokenizer: {err} Or pass --tokenizer DIR.") from None


def load_align_encoders(
    path: str, *, device: str = "cpu", tokenizer: str | None = None, batch_size: int = 32
) -> AlignEncoders:
    """The encoders of the alignment run at `path` (its output folder or its align/ folder)."""
    from r1_ds.align.data import pad_right, tokenize
    from r1_ds.align.heads import AlignHeads
    from r1_ds.align.image_tower import build_image_tower, embed_images
    from r1_ds.align.model import AlignModel
    from r1_ds.align.settings import AlignSettings
    from r1_ds.config import TrainConfig
    from r1_ds.data import DataError

    from .model_io import load_causal_lm

    run = find_run(path)
    with open(os.path.join(run, "train_config.json")) as f:
        config = json.load(f)
    a = {**vars(AlignSettings()), **(config.get("align") or {})}
    tok = _tokenizer(a, tokenizer)
    lm, _ = load_causal_lm(os.path.join(run, "align", "lm"), device=device, needs_tokenizer=False)
    heads = AlignHeads.from_pretrained(os.path.join(run, "align", "heads")).to(device).eval()
    module = AlignModel(lm, heads).eval()
    try:
        visual, preprocess, dim = build_image_tower(
            a["image_tower"],
            a["image_tower_checkpoint"],
            image_size=a["image_size"],
            seed=config.get("seed", TrainConfig.seed),
        )
    except DataError as err:
        raise EvalInputError(f"the alignment run's image tower: {err}") from None
    if dim != heads.config.image_dim:
        raise EvalInputError(
            f"the image tower {a['image_tower']} gives {dim}-d embeddings but the heads in {run} "
            f"take {heads.config.image_dim}. Fix: evaluate with the run's own train_config.json."
        )
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def strings(modality: str, limit: int) -> Embed:
        @torch.no_grad()
        def embed(items: list) -> torch.Tensor:
            out = []
            for i in range(0, len(items), batch_size):
                ids, mask = pad_right([tokenize(tok, s, limit) for s in items[i : i + batch_size]], pad)
                out.append(module.embed_tokens(modality, ids.to(device), mask.to(device)).float().cpu())
            return torch.cat(out)

        return embed

    @torch.no_grad()
    def images(paths: list) -> torch.Tensor:
        emb, failed = embed_images(paths, visual, preprocess, batch_size=batch_size)
        if failed:
            first = next(iter(failed.items()))
            raise EvalInputError(
                f"{len(failed)} image(s) could not be read, e.g. {first[0]} ({first[1]}). Fix: "
                "pass the folder holding the images the JSON names (--images)."
            )
        return heads.project("image", emb.to(device)).float().cpu()

    tower = f"{a['image_tower']} " + (
        f"from {a['image_tower_checkpoint']}" if a["image_tower_checkpoint"] else "random-init"
    )
    return AlignEncoders(
        images=images,
        texts=strings("text", a["text_len"]),
        codes=strings("code", a["code_len"]),
        description=f"alignment run {run}: R1 pooled + text/code heads; {tower} tower + image head",
    )
