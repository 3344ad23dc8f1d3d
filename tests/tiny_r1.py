"""Tiny random-init R1 models on the eager reference and fixed token ids: the tests of R1Config's options."""

import torch

from r1_ds.model import R1Config, R1ForCausalLM


def eager_tiny(seed=0, **overrides):
    """The "tiny" preset with `overrides`, seeded, in eval mode, on the eager reference."""
    torch.manual_seed(seed)
    model = R1ForCausalLM(R1Config.from_preset("tiny", **overrides)).eval()
    model.set_attn_implementation("eager")
    return model


def token_ids(T=96, seed=1):
    return torch.randint(0, 512, (2, T), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits
