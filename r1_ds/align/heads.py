"""Projection heads and per-pair temperatures of the alignment objective, as a small Hugging Face model.

Plain torch + transformers: `AlignHeads.save_pretrained(dir)` / `AlignHeads.from_pretrained(dir)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel

from .loss import bounded_logit_scale

PAIRS = ("image-text", "image-code", "text-code")
"""The modality pairs of the objective, in the order of AlignHeads.log_scale."""


class AlignHeadsConfig(PretrainedConfig):
    """Sizes of the heads. hidden_size: the R1 model's; image_dim: the frozen image tower's output; proj_dim: the
    shared embedding; image_hidden: width of the image head's hidden layer (0: linear); init_temperature and
    min/max_temperature: the learnable temperature of each pair starts at init and stays in [min, max]."""

    model_type = "r1_align_heads"

    def __init__(
        self,
        hidden_size: int = 64,
        image_dim: int = 512,
        proj_dim: int = 64,
        image_hidden: int = 256,
        init_temperature: float = 0.07,
        min_temperature: float = 0.01,
        max_temperature: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size, self.image_dim, self.proj_dim, self.image_hidden = (
            hidden_size,
            image_dim,
            proj_dim,
            image_hidden,
        )
        self.init_temperature, self.min_temperature, self.max_temperature = (
            init_temperature,
            min_temperature,
            max_temperature,
        )


class AlignHeads(PreTrainedModel):
    """text_proj / code_proj: R1 pooled hidden state -> proj_dim; image_proj: image-tower embedding -> proj_dim;
    log_scale: (3,) log of 1 / temperature per pair (PAIRS order), used through `logit_scale`."""

    config_class = AlignHeadsConfig
    base_model_prefix = "align_heads"

    def __init__(self, config: AlignHeadsConfig):
        super().__init__(config)
        self.text_proj = nn.Linear(config.hidden_size, config.proj_dim, bias=False)
        self.code_proj = nn.Linear(config.hidden_size, config.proj_dim, bias=False)
        if config.image_hidden:
            self.image_proj = nn.Sequential(
                nn.LayerNorm(config.image_dim),
                nn.Linear(config.image_dim, config.image_hidden),
                nn.GELU(),
                nn.Linear(config.image_hidden, config.proj_dim, bias=False),
            )
        else:
            self.image_proj = nn.Sequential(
                nn.LayerNorm(config.image_dim), nn.Linear(config.image_dim, config.proj_dim, bias=False)
            )
        self.log_scale = nn.Parameter(torch.full((len(PAIRS),), math.log(1 / config.init_temperature)))
        # Per-dimension statistics of the frozen tower's embeddings over the training images (set_image_stats):
        # a random-init tower's embeddings share a large common component that standardising removes.
        self.register_buffer("image_mean", torch.zeros(config.image_dim))
        self.register_buffer("image_std", torch.ones(config.image_dim))
        self.post_init()

    @torch.no_grad()
    def set_image_stats(self, embeddings: torch.Tensor) -> None:
        """Standardise image embeddings with the mean and std of `embeddings` (N, image_dim) from now on."""
        self.image_mean.copy_(embeddings.mean(0))
        self.image_std.copy_(
            embeddings.std(0).clamp(min=1e-6) if embeddings.shape[0] > 1 else torch.ones_like(self.image_std)
        )

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, AlignHeads):
            with torch.no_grad():
                module.log_scale.fill_(math.log(1 / module.config.init_temperature))

    def logit_scale(self, pair: int) -> torch.Tensor:
        """1 / temperature of pair `pair` (index into PAIRS), bounded by the config's temperatures."""
        c = self.config
        return bounded_logit_scale(
            self.log_scale[pair], min_scale=1 / c.max_temperature, max_scale=1 / c.min_temperature
        )

    def project(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (N, proj_dim) of pooled features `x` of `modality` ("image", "text" or "code")."""
        head = {"image": self.image_proj, "text": self.text_proj, "code": self.code_proj}[modality]
        if modality == "image":
            x = (x.to(self.image_mean.dtype) - self.image_mean) / self.image_std
        return F.normalize(head(x.to(next(head.parameters()).dtype)), dim=-1)
