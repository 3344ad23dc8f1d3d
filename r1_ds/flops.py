"""Model FLOPs per token and MFU (model FLOPs utilisation), shared by the trainer and the benchmark.

Counts matmul FLOPs of one forward + backward (3x forward), without activation recomputation:

    dense   6 * (linear weights inside the layers + the LM head d * V)     (2 FLOPs per MAC, x3)
    attn    per layer and token, 2 matmuls (q.k and p.v) of 2 * d FLOPs per visible key, x3, with the
            visible keys of docs/architecture.md averaged over positions (visible_keys, which
            benchmarks/attention.py also uses)
The embedding lookup is not a matmul and is not counted (as in PaLM / nanoGPT MFU).
"""

from __future__ import annotations


def dense_params(config) -> int:
    """Weights of the matmuls of one token: decoder linears + the LM head."""
    d, f, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    per_layer = 4 * d * d + 9 * d + 3 * d * f  # q, k, v, o; level gate (3d -> 3); SwiGLU gate/up/down
    return L * per_layer + d * V


def visible_keys(seq_len: int, *, window: int, paragraph_size: int, document_size: int, top_k: int) -> int:
    """Keys attended to by all seq_len queries together, summed over the three levels (query t sees
    min(t + 1, window) tokens in L1; 1 + min(p, span) summaries + g * min(p, top_k) routed tokens in
    L2, p = t // g its paragraph; 1 + t // G document summaries in L3)."""
    g, G = paragraph_size, document_size
    span = G // g
    total = 0
    for t in range(seq_len):
        p = t // g
        total += min(t + 1, window) + 1 + min(p, span) + g * min(p, top_k) + 1 + t // G
    return total


def attention_keys_per_token(config, seq_len: int) -> float:
    """Mean number of keys one query attends to, summed over the three levels (see visible_keys)."""
    return (
        visible_keys(
            seq_len,
            window=config.local_window,
            paragraph_size=config.paragraph_size,
            document_size=config.document_size,
            top_k=config.route_top_k,
        )
        / seq_len
    )


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token of R1 (routing's small matmuls not counted)."""
    attn = config.num_hidden_layers * 2 * 2 * config.hidden_size * attention_keys_per_token(config, seq_len)
    return 3 * (2 * dense_params(config) + attn)


def dense_flops_per_token(
    *, hidden_size: int, intermediate_size: int, num_layers: int, vocab_size: int, seq_len: int
) -> float:
    """The same count for a Llama-style decoder with full causal attention ((T + 1) / 2 keys on average)."""
    d = hidden_size
    dense = num_layers * (4 * d * d + 3 * d * intermediate_size) + d * vocab_size
    return 3 * (2 * dense + num_layers * 4 * d * (seq_len + 1) / 2)


# Dense peak TFLOP/s per device by name fragment and dtype (NVIDIA spec sheets, without sparsity).
_PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},  # fp32 = TF32 tensor cores
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 183.0},
}


def peak_flops(dtype: str, device_name: str | None = None) -> float | None:
    """Peak FLOP/s of one device, or None when unknown (CPU, unlisted GPU)."""
    if device_name is None:
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            device_name = torch.cuda.get_device_name()
        except Exception:  # noqa: BLE001 - no device information: MFU is simply not reported
            return None
    for key, table in _PEAK_TFLOPS.items():
        if key in device_name:
            return table.get(dtype, table["bf16"]) * 1e12
    return None
