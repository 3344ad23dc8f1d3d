"""The module DeepSpeed trains for alignment: the R1 language model (text and code tower) plus AlignHeads.

Plain torch: the data-parallel group to gather negatives over is given from outside (None: no gather).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .heads import PAIRS, AlignHeads
from .loss import info_nce

MODALITIES = ("image", "text", "code")
PAIR_SIDES = tuple(tuple(MODALITIES.index(m) for m in p.split("-")) for p in PAIRS)  # (0, 1), (0, 2), (1, 2)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden (N, L, H) over the positions where mask (N, L) is 1 -> (N, H). With right padding and a
    causal model, the real tokens never saw the pads, so the mean is that of the unpadded sequence."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class AlignModel(nn.Module):
    """forward(batch) -> {"loss", "pair_loss" (3,), "features" {modality: (N, D)}, "lm_loss"?}.

    batch: "tokens" (2N, L): the N texts then the N codes, right-padded; "token_mask" (2N, L); "image" (N, E):
    frozen-tower embeddings; "has" (N, 3) bool: which of image / text / code a row holds; "weights" (3,): the
    loss weight of each pair; "lm_ids" (M, T), optional: a language-model batch whose loss is added with
    `lm_weight` (the alignment loss then counts `align_weight` times).
    """

    def __init__(
        self, lm: nn.Module, heads: AlignHeads, *, group=None, align_weight: float = 1.0, lm_weight: float = 1.0
    ):
        super().__init__()
        self.lm, self.heads = lm, heads
        self.group, self.align_weight, self.lm_weight = group, align_weight, lm_weight

    def encode_tokens(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled last hidden states (N, H) of the R1 model."""
        hidden = self.lm.model(input_ids=tokens, use_cache=False).last_hidden_state
        return masked_mean(hidden, mask)

    def embed_tokens(self, modality: str, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (N, D) of right-padded token rows (N, L) of `modality` ("text" or "code")."""
        return self.heads.project(modality, self.encode_tokens(tokens, mask))

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        """Unit-norm embeddings per modality, (N, D) each (rows missing a modality hold whatever, masked later)."""
        n = batch["has"].shape[0]
        pooled = self.encode_tokens(batch["tokens"], batch["token_mask"])
        return {
            "image": self.heads.project("image", batch["image"]),
            "text": self.heads.project("text", pooled[:n]),
            "code": self.heads.project("code", pooled[n:]),
        }

    def forward(self, batch: dict) -> dict:
        feats = self.embed(batch)
        has = batch["has"].to(torch.bool)
        losses = []
        for p, (i, j) in enumerate(PAIR_SIDES):
            a, b = feats[MODALITIES[i]], feats[MODALITIES[j]]
            losses.append(info_nce(a, b, self.heads.logit_scale(p), mask=has[:, i] & has[:, j], group=self.group))
        pair_loss = torch.stack(losses)
        loss = self.align_weight * (batch["weights"].to(pair_loss.dtype) * pair_loss).sum()
        out = {"pair_loss": pair_loss.detach(), "features": {k: v.detach() for k, v in feats.items()}}
        if batch.get("lm_ids") is not None:
            lm_loss = self.lm(input_ids=batch["lm_ids"], labels=batch["lm_ids"], use_cache=False).loss
            loss = loss + self.lm_weight * lm_loss
            out["lm_loss"] = lm_loss.detach()
        out["loss"] = loss
        return out
