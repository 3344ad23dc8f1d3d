"""The dense baseline every benchmark measures R1 against: HF Llama of the same size.

Same width, depth, MLP width, norm epsilon and vocabulary as the R1 config, tied embeddings, and L2's head count
(the middle level's heads: 12 x 64 at 125m, 16 x 64 at 350M, 16 x 128 at 1.3B), with SDPA attention, so a
difference in speed or loss comes from the attention, not from the model's size.
"""

from __future__ import annotations

from r1_ds.model import R1Config


def llama_like(r1: R1Config, *, max_positions: int, vocab_size: int | None = None):
    """LlamaForCausalLM (random init) sized like `r1`; `vocab_size` overrides r1's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = r1.level_heads[1]
    config = LlamaConfig(
        vocab_size=r1.vocab_size if vocab_size is None else vocab_size,
        hidden_size=r1.hidden_size,
        intermediate_size=r1.intermediate_size,
        num_hidden_layers=r1.num_hidden_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=r1.rms_norm_eps,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)
