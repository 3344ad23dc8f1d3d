"""The evaluation table that ends `r1-ds demo`: perplexity, retrieval, HumanEval pass@1 on a few
problems, each row saying what data it used (synthetic sets named as such). Small models score near
zero on HumanEval; the table reports what they score."""

from __future__ import annotations

import logging
import os

from .results import format_table, write_results

log = logging.getLogger("r1_ds.evaluation")


def evaluation_table(
    model_dir: str,
    *,
    shards: str | None = None,
    shards_held_out: bool = False,
    triples: str | None = None,
    align_run: str | None = None,
    humaneval_problems: int = 3,
    max_new_tokens: int = 64,
    out: str | None = None,
) -> str:
    """Evaluate the exported folder `model_dir`; write the results JSON (default MODEL/eval/demo.json)
    and return the table. `align_run`: the output folder of an alignment run, whose encoders retrieve
    images and captions of the shipped synthetic Karpathy set; without it that row says it did not run."""
    from r1_ds.data import PackedShards

    from . import humaneval
    from .model_io import load_causal_lm
    from .perplexity import heldout_loss
    from .retrieval import (
        image_text_retrieval,
        load_karpathy,
        load_text_code_pairs,
        pooled_lm_embedder,
        text_code_retrieval,
    )
    from .synthetic import DATA_DIR

    model, tok = load_causal_lm(model_dir)
    rows, results = [], {}
    if shards:
        where = "held-out shards" if shards_held_out else "training shards, NOT held out"
        ppl = heldout_loss(model, PackedShards(shards), max_sequences=64)
        results["perplexity"] = {**ppl, "data": where}
        rows += [(f"perplexity ({where})", "loss", ppl["loss"]), ("", "perplexity", ppl["perplexity"])]
    if triples and os.path.isfile(triples):
        texts, codes = load_text_code_pairs(triples, max_items=100)
        embed = pooled_lm_embedder(model, tok)
        tc = text_code_retrieval(embed, embed, texts, codes)
        results["text_code_retrieval"] = {**tc, "encoder": "pooled LM states, no alignment head"}
        rows += [
            (f"text->code retrieval ({tc['pairs']} prep pairs, pooled LM states)", f"R@{k}", tc[f"text_to_code_R@{k}"])
            for k in (1, 10)
        ]
    if align_run:
        from .align_encoders import load_align_encoders

        enc = load_align_encoders(align_run)
        paths, caps, owner = load_karpathy(os.path.join(DATA_DIR, "karpathy", "dataset_flickr30k.json"))
        it = image_text_retrieval(enc.images, enc.texts, paths, caps, owner)
        chance = 100 / it["images"]  # both directions: 1 / images when every image has as many captions
        results["image_text_retrieval"] = {**it, "synthetic": True, "encoder": enc.description, "chance_R@1": chance}
        rows += [
            (
                f"image->text retrieval (SYNTHETIC shapes, {it['images']} images, aligned encoders)",
                f"R@{k}",
                it[f"image_to_text_R@{k}"],
            )
            for k in (1, 5)
        ]
        rows += [
            ("text->image retrieval (SYNTHETIC shapes)", "R@1", it["text_to_image_R@1"]),
            ("image<->text chance", "R@1", chance),
        ]
    else:
        rows.append(("image<->text retrieval", "not run", "no image-text encoder (no alignment run)"))
    if humaneval_problems:
        he, _ = humaneval.evaluate(
            model, tok, n=1, temperature=0.0, max_new_tokens=max_new_tokens, limit=humaneval_problems
        )
        results["humaneval"] = he
        rows += [
            (f"HumanEval (first {he['problems']} problems, greedy)", "pass@1", he["pass@1"]),
            ("", "seconds/problem", he["seconds_per_problem"]),
        ]
    write_results(out or os.path.join(model_dir, "eval", "demo.json"), results)
    return format_table([(t, m, v) for t, m, v in rows], title=f"evaluation of {model_dir}")
