"""Retrieval recall@k: image<->text on a Flickr30K-style set (Karpathy-split JSON + image folder) and
text<->code on triples. Embeddings come from callables (list of inputs -> (N, D) tensor), so any
encoder pair plugs in: open_clip here, the alignment model's towers where they exist.

Definitions (clip_benchmark's): text->image R@k is the share of captions whose image is among the k
most similar images; image->text R@k the share of images with at least one of their captions among
the k most similar captions. A tie with a wrong candidate counts against the match, so constant
scores give R@k = 0 (k < candidates), not 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

from r1_ds.align.retrieval import recall_at_k

from .model_io import Embed, EvalInputError

KS = (1, 5, 10)


def image_text_recall(sim: torch.Tensor, image_of_text: Sequence[int], ks: Sequence[int] = KS) -> dict[str, float]:
    """{"image_to_text_R@k", "text_to_image_R@k"} x100 of an (images, texts) similarity matrix."""
    owner = torch.as_tensor(list(image_of_text))
    positives = owner.unsqueeze(0) == torch.arange(sim.shape[0]).unsqueeze(1)  # (I, T)
    out = {f"image_to_text_R@{k}": 100 * recall_at_k(sim, k, positives) for k in ks}
    out.update({f"text_to_image_R@{k}": 100 * recall_at_k(sim.T, k, positives.T) for k in ks})
    return out


def paired_recall(sim: torch.Tensor, names: tuple[str, str], ks: Sequence[int] = KS) -> dict[str, float]:
    """Both directions of a square matrix whose diagonal holds the pairs (e.g. text i <-> code i)."""
    a, b = names
    out = {f"{a}_to_{b}_R@{k}": 100 * recall_at_k(sim, k) for k in ks}
    out.update({f"{b}_to_{a}_R@{k}": 100 * recall_at_k(sim.T, k) for k in ks})
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = torch.nn.functional.normalize(a.float(), dim=-1), torch.nn.functional.normalize(b.float(), dim=-1)
    return a @ b.T


# ----------------------------------------------------------------------------- data


def load_karpathy(
    json_path: str, images_dir: str | None = None, split: str = "test", max_images: int | None = None
) -> tuple[list[str], list[str], list[int]]:
    """(image paths, captions, image index of each caption) of one split of a Karpathy-split JSON."""
    if not os.path.isfile(json_path):
        raise EvalInputError(
            f"--karpathy {json_path!r} is not a file. Fix: pass the Karpathy split JSON "
            "(dataset_flickr30k.json) or `synthetic`."
        )
    with open(json_path) as f:
        data = json.load(f)
    images_dir = images_dir or os.path.join(os.path.dirname(json_path), "images")
    rows = [im for im in data.get("images", []) if im.get("split") == split][:max_images]
    if not rows:
        raise EvalInputError(
            f"{json_path} has no image with split={split!r}. Fix: choose --split among "
            f"{sorted({im.get('split') for im in data.get('images', [])})}."
        )
    paths, captions, owner = [], [], []
    for i, im in enumerate(rows):
        path = os.path.join(images_dir, im["filename"])
        if not os.path.isfile(path):
            raise EvalInputError(
                f"image {path} (from {json_path}) is missing. Fix: pass --images, the folder "
                "holding the images the JSON names."
            )
        paths.append(path)
        for s in im["sentences"]:
            captions.append(s["raw"])
            owner.append(i)
    return paths, captions, owner


def load_text_code_pairs(triples_path: str, max_items: int | None = None) -> tuple[list[str], list[str]]:
    """(texts, codes) of the triples (or text-code pairs) that have both, from `r1-ds prep`'s
    triples.jsonl; a text or code seen before is skipped, so each query has one match."""
    if not os.path.isfile(triples_path):
        raise EvalInputError(
            f"--triples {triples_path!r} is not a file. Fix: pass OUT/triples/triples.jsonl written by `r1-ds prep`."
        )
    texts, codes, seen = [], [], set()
    with open(triples_path) as f:
        for line in f:
            rec = json.loads(line)
            t, c = rec.get("text"), rec.get("code")
            if t and c and t not in seen and c not in seen:
                seen.update((t, c))
                texts.append(t)
                codes.append(c)
    if len(texts) < 2:
        raise EvalInputError(f"{triples_path} holds {len(texts)} distinct text-code pairs; retrieval needs >= 2.")
    return texts[:max_items], codes[:max_items]


# ----------------------------------------------------------------------------- evaluation


def image_text_retrieval(
    embed_images: Embed,
    embed_texts: Embed,
    image_paths: list[str],
    captions: list[str],
    image_of_text: list[int],
    ks: Sequence[int] = KS,
) -> dict:
    sim = cosine(embed_images(image_paths), embed_texts(captions))
    return {"images": len(image_paths), "captions": len(captions), **image_text_recall(sim, image_of_text, ks)}


def text_code_retrieval(
    embed_texts: Embed, embed_codes: Embed, texts: list[str], codes: list[str], ks: Sequence[int] = KS
) -> dict:
    sim = cosine(embed_texts(texts), embed_codes(codes))
    return {"pairs": len(texts), **paired_recall(sim, ("text", "code"), ks)}


def pooled_lm_embedder(model, tokenizer, *, max_len: int = 128, batch_size: int = 16) -> Embed:
    """Texts -> the mean of the language model's last hidden states (no trained head): a zero-shot
    baseline until an aligned encoder is given."""

    @torch.no_grad()
    def embed(texts: list) -> torch.Tensor:
        from r1_ds.align.data import pad_right, tokenize
        from r1_ds.align.model import masked_mean

        base = getattr(model, "model", model)
        device = next(model.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = pad_right([tokenize(tokenizer, t, max_len) for t in texts[i : i + batch_size]], 0)
            ids, mask = ids.to(device), mask.to(device)
            h = base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, T, D)
            out.append(masked_mean(h.float(), mask))  # right padding: the mask drops the pads
        return torch.cat(out).cpu()

    return embed


def open_clip_embedders(arch: str, weights: str, device: str) -> tuple[Embed, Embed]:
    """(images -> embeddings, texts -> embeddings) of an open_clip model loaded from a local file."""
    import open_clip
    from PIL import Image

    if not weights or not os.path.isfile(weights):
        raise EvalInputError(
            f"--clip-weights {weights!r} is not a file. Fix: pass a local open_clip checkpoint "
            "(no download happens here)."
        )
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights, device=device)
    tokenizer = open_clip.get_tokenizer(arch)
    model.eval()

    @torch.no_grad()
    def images(paths: list) -> torch.Tensor:
        return torch.cat(
            [
                model.encode_image(
                    torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[i : i + 32]]).to(device)
                ).cpu()
                for i in range(0, len(paths), 32)
            ]
        )

    @torch.no_grad()
    def texts(caps: list) -> torch.Tensor:
        return torch.cat(
            [model.encode_text(tokenizer(caps[i : i + 128]).to(device)).cpu() for i in range(0, len(caps), 128)]
        )

    return images, texts


def run_cli(args, *, need_model, device: str) -> dict:
    """`r1-ds eval retrieval`: text<->code with --triples, image<->text with --karpathy; through the encoders of
    an alignment run (--align), else the model's pooled states (text<->code) and an open_clip model (image<->text)."""
    from .model_io import load_causal_lm
    from .synthetic import DATA_DIR

    if not args.triples and not args.karpathy:
        raise EvalInputError("retrieval needs --triples FILE (text<->code) and/or --karpathy JSON (image<->text)")
    if args.align and (args.clip or args.model):
        raise EvalInputError(
            "--align evaluates an alignment run's own encoders; --model and --clip name others. "
            "Fix: pass --align alone, or --model / --clip without it."
        )
    aligned = None
    if args.align:
        from .align_encoders import load_align_encoders

        aligned = load_align_encoders(args.align, device=device, tokenizer=args.tokenizer)
    results: dict = {"task": "retrieval", "synthetic": False}
    if args.triples:
        texts, codes = load_text_code_pairs(args.triples, args.max_items)
        if aligned:
            encoder, embed_texts, embed_codes = aligned.description, aligned.texts, aligned.codes
        else:
            model, tok = load_causal_lm(need_model(args), device=device)
            encoder, embed_texts = "pooled LM hidden states (no alignment head)", pooled_lm_embedder(model, tok)
            embed_codes = embed_texts
        results["text_code"] = {"encoder": encoder, **text_code_retrieval(embed_texts, embed_codes, texts, codes)}
    if args.karpathy:
        synthetic = args.karpathy == "synthetic"
        path = os.path.join(DATA_DIR, "karpathy", "dataset_flickr30k.json") if synthetic else args.karpathy
        if aligned:
            encoder, embed_images, embed_texts = aligned.description, aligned.images, aligned.texts
        elif args.clip:
            encoder = f"open_clip {args.clip}"
            embed_images, embed_texts = open_clip_embedders(args.clip, args.clip_weights, device)
        else:
            raise EvalInputError(
                "image<->text retrieval needs an image-text encoder: --align RUN (an alignment "
                "run's output folder) or --clip ARCH --clip-weights FILE (open_clip)."
            )
        paths, caps, owner = load_karpathy(path, args.images, args.split, args.max_items)
        results["image_text"] = {
            "encoder": encoder,
            "synthetic": synthetic,
            **image_text_retrieval(embed_images, embed_texts, paths, caps, owner),
        }
        results["synthetic"] = synthetic
    return results
