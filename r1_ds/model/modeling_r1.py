"""The R1 model: a decoder-only transformer with hierarchical attention, as Hugging Face modules.

Plain torch + transformers (no DeepSpeed, no ranks): parallelism is applied from outside by
r1_ds.parallel. Read docs/architecture.md beside this file's formulas.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.utils.generic import can_return_tuple

from .configuration_r1 import R1Config, check_attn_implementation
from .group_summaries import cache_layer_keys, layer_summaries
from .hierarchical_attention import (
    compiled_on_cuda,
    hierarchical_attention_decode,
    hierarchical_attention_eager,
    hierarchical_attention_flex,
    rotate_keys,
)
from .token_layout import TokenLayout, attention_by_segment, repeat_last_token, token_layout

# transformers 5.24 renamed `past_key_values` to `cache` (arguments and output fields); 5.17, on the
# GPU image, still uses the old name. Accept both, emit whichever this version's outputs define.
_CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def _take_cache(past_key_values, kwargs):
    cache = kwargs.pop("cache", None)
    return cache if cache is not None else past_key_values


# One graph a decoding step on GPU, under either attention implementation, as the element-wise glue below:
# eager, a step is a few hundred small kernels a layer, and a small model's step is all kernel launches.
# Its lengths grow every step, so dynamic (a handful of recompiles at small lengths, then none).
_attention_decode = compiled_on_cuda(hierarchical_attention_decode, dynamic=None)

# Element-wise pieces of the block, compiled into single kernels on GPU (eager, and identical, on
# CPU). Left eager they cost more than the matmuls around them: benchmarks/results/train_throughput.md.


@compiled_on_cuda(dynamic=None)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


@compiled_on_cuda(dynamic=None)
def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


@compiled_on_cuda(dynamic=None)
def level_gate_logits(
    h1: torch.Tensor, h2: torch.Tensor, h3: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """W_g [h1; h2; h3] + b_g (B, T, 3) in fp32, as three dot products per token and level. A matmul
    with 3 output columns falls back to slow untiled GEMM kernels on GPU (measured: 38% of a 1.3B
    training step); as a reduction it is one pass over h1, h2, h3."""
    d = h1.shape[-1]
    logits = bias.float()
    for i, h in enumerate((h1, h2, h3)):
        logits = logits + (h.float().unsqueeze(-2) * weight[:, i * d : (i + 1) * d].float()).sum(-1)
    return logits


@compiled_on_cuda(dynamic=None)
def gated_sum(h1: torch.Tensor, h2: torch.Tensor, h3: torch.Tensor, logits: torch.Tensor):
    """alpha = sigmoid(logits); h1 + sum_i alpha_i h_i (the residual path keeps h1 whole)."""
    alpha = torch.sigmoid(logits.float())
    fused = h1.float() * (1 + alpha[..., 0:1]) + alpha[..., 1:2] * h2.float() + alpha[..., 2:3] * h3.float()
    return fused.to(h1.dtype), alpha.to(h1.dtype)


@compiled_on_cuda(dynamic=None)
def _smoothed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float, ignore_index: int, reduction: str
) -> torch.Tensor:
    # Compiled, the fp32 upcast of the (B, T, V) logits never reaches memory.
    return F.cross_entropy(
        logits.float(), labels, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction
    )


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.1,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Label-smoothed next-token cross entropy. logits (B, T, V), labels (B, T) unshifted (HF style)."""
    logits = logits[:, :-1]
    labels = labels[:, 1:].to(logits.device)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = _smoothed_cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), float(label_smoothing), ignore_index, reduction
    )
    if num_items_in_batch is not None:  # gradient accumulation: normalise by the tokens of all micro-batches
        loss = loss / num_items_in_batch
    return loss


class R1RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch for whole samples with probability `rate` (training
    only) and rescales the kept ones by 1/(1-rate). The trainer raises `rate` over training."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        # 1 - rate as a tensor that is updated in place: a compiled block reads it as an input, so the
        # rate can change every step without a recompile (a float attribute would be baked into the
        # graph; each value a recompile, and past dynamo's limit the block silently runs eager). A
        # plain attribute, not a buffer, so casting the model to bf16 leaves it fp32 (and on the CPU).
        self._keep = torch.ones(())
        self.rate = rate

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate = float(value)
        self._on = self._rate > 0.0  # the only thing a compiled block branches on: one recompile at switch-on
        with torch.no_grad():
            self._keep.fill_(1.0 - self._rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self._on:
            return x
        mask = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) < self._keep
        return x * mask.to(x.dtype) / self._keep


class R1MLP(nn.Module):
    def __init__(self, config: R1Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class R1LevelGate(nn.Module):
    """W_g, b_g of the level gate: rows 0..2 of a (8, 3d) weight and an (8,) bias, stored as an
    nn.Linear(3d, 8) stores them (`weight`, `bias`; so init, checkpoints and tensor-parallel plans
    treat it as a linear layer). Rows 3..7 are zero and unused: they are there so that every
    parameter has a multiple of 8 elements. DeepSpeed packs parameters back to back into flat
    buffers, and one 3-element bias would leave every later weight 6 bytes (bf16) off 16-byte
    alignment, which pushes cuBLAS onto its slow unaligned kernels (measured: a 1.3B step ran 2.5x
    slower than Llama's) and breaks compiled kernels. It also takes the three levels apart, skipping
    the concatenation.

    Not an nn.Linear subclass: its forward takes three tensors, and adapters that wrap every nn.Linear
    (PEFT's target_modules="all-linear") call a linear layer with one."""

    rows = 3  # levels

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @staticmethod
    def gate_input(levels: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """[h1; h2; h3], given apart or already concatenated."""
        return levels[0] if len(levels) == 1 else torch.cat(levels, dim=-1)

    def forward(self, *levels: torch.Tensor) -> torch.Tensor:
        """(B, T, 3) logits, from [h1; h2; h3] or from h1, h2, h3 apart."""
        if len(levels) == 1 or not levels[0].is_cuda:  # CPU: the plain matmul is fine there
            return F.linear(self.gate_input(levels), self.weight, self.bias)[..., : self.rows]
        return level_gate_logits(*levels, self.weight[: self.rows], self.bias[: self.rows])


class R1HierarchicalAttention(nn.Module):
    """Three attention levels over one q/k/v projection, weighed per token by a sigmoid gate:
    alpha = sigmoid(W_g [h_L1; h_L2; h_L3] + b_g)          alpha: (B, T, 3)
    out   = W_o (h_L1 + sum_i alpha_i h_Li)                  (residual path to the L1 features)
    """

    def __init__(self, config: R1Config, layer_idx: int):
        super().__init__()
        d = config.hidden_size
        self.config = config
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        if config.l2_projections == "separate":  # research option: L2's own q/k/v (eager reference only)
            self.l2_q_proj = nn.Linear(d, d, bias=False)
            self.l2_k_proj = nn.Linear(d, d, bias=False)
            self.l2_v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.gate = R1LevelGate(3 * d, 8)  # W_g, b_g (3 rows used)

    def kernel_kwargs(self) -> dict:
        c = self.config
        return dict(
            level_heads=tuple(c.level_heads),
            window=c.local_window,
            paragraph_size=c.paragraph_size,
            document_size=c.document_size,
            top_k=c.route_top_k,
            rope_theta=c.rope_theta,
        )

    def levels(self, x: torch.Tensor, past_key_values: Cache | None = None, layout: TokenLayout | None = None):
        """The three level outputs (B, T, d) each, before gating. `layout` (None: each row is one dense
        sequence) names the sequences of a padded or packed batch (see token_layout.py)."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, d)
        past, keys_before = 0, None
        if past_key_values is not None:
            # The cache holds [k | q] as "keys" and v as "values", shaped (B, 1, T, .): routing needs
            # the history of queries too, and one head axis keeps any HF cache helper working.
            past = past_key_values.get_seq_length(self.layer_idx)
            keys_before = cache_layer_keys(past_key_values, self.layer_idx)
            kq, v_all = past_key_values.update(torch.cat([k, q], -1)[:, None], v[:, None], self.layer_idx)
            k_all, q_all = kq[:, 0].split(k.shape[-1], dim=-1)
            v_all = v_all[:, 0]
        else:
            k_all, q_all, v_all = k, q, v
        impl = self.config._attn_implementation
        if self.config.l2_research:
            return self.research_levels(x, q, k_all, v_all, q_all, past, layout, impl)
        if layout is not None:  # each sequence on its own, renumbered from 0
            return attention_by_segment(
                q, k_all, v_all, q_all, layout, flex=impl == "flex_attention", **self.kernel_kwargs()
            )
        if impl == "flex_attention" and past == 0:
            return hierarchical_attention_flex(q, k, v, **self.kernel_kwargs())
        if past == 0:
            return hierarchical_attention_eager(q, k_all, v_all, q_all, range(x.shape[1]), **self.kernel_kwargs())
        # Decoding: the new queries are the newest positions of the cache. Both implementations take the
        # gathered decode path (the reference's result, reading only the keys a query sees), with the group
        # summaries and rotated keys kept beside the cache.
        summaries, k_rot = self.decode_state(past_key_values, keys_before, past, q_all, k_all, v_all)
        return _attention_decode(q, k_all, v_all, q_all, summaries=summaries, k_rot=k_rot, **self.kernel_kwargs())

    def research_levels(self, x, q, k, v, q_hist, past: int, layout, impl: str):
        """The L2 research options (R1Config.l2_routing / l2_projections): the eager reference, on whole
        unpadded sequences without a cache; every other path refuses them, with the fix."""
        c = self.config
        where = None
        if impl != "eager":
            where = f"attn_implementation={impl!r}"
        elif past:
            where = "decoding with a KV cache"
        elif layout is not None:
            where = "padded or packed rows"
        if where:
            raise NotImplementedError(
                f"R1Config l2_routing={c.l2_routing!r}, l2_projections={c.l2_projections!r}: research options "
                f"that only the eager reference computes, on whole unpadded sequences without a cache; "
                f"{where} does not. Fix: model.set_attn_implementation('eager') and call the model with "
                f"use_cache=False on unpadded rows, or keep the defaults (l2_routing='paragraph', "
                f"l2_projections='shared')."
            )
        l2 = None
        if c.l2_projections == "separate":
            q2 = self.l2_q_proj(x)
            l2 = (q2, self.l2_k_proj(x), self.l2_v_proj(x), q2)
        return hierarchical_attention_eager(
            q, k, v, q_hist, range(x.shape[1]), l2_qkv=l2, l2_routing=c.l2_routing, **self.kernel_kwargs()
        )

    @torch.no_grad()
    def copy_shared_into_l2(self) -> None:
        """L2's own q/k/v (l2_projections="separate") set to the shared projections: the layer then computes what
        it computes with shared projections, and training lets L2's part from L1's (a checkpoint trained with shared
        projections has no L2 weights to load)."""
        for name in ("q", "k", "v"):
            getattr(self, f"l2_{name}_proj").weight.copy_(getattr(self, f"{name}_proj").weight)

    def decode_state(self, cache: Cache, keys_before, past: int, q_all, k_all, v_all):
        """(group summaries, rotated keys) of this layer's history (B, T, d), extended from the last step's when
        the cache grew from the tensor they were made beside (group_summaries.py); (None, None), which the decode
        step computes itself, with gradients on (state kept across steps would hold earlier steps' graphs) or a
        cache that is not a DynamicCache."""
        keys_after = cache_layer_keys(cache, self.layer_idx)
        if torch.is_grad_enabled() or keys_after is None:
            return None, None
        state = layer_summaries(cache, self.layer_idx)
        c = self.config
        return state.update(
            q_all,
            k_all,
            v_all,
            keys_after,
            functools.partial(rotate_keys, level_heads=tuple(c.level_heads), rope_theta=c.rope_theta),
            valid=state.valid_for(keys_before, past),
            paragraph_size=c.paragraph_size,
            document_size=c.document_size,
        )

    def fuse(self, h1: torch.Tensor, h2: torch.Tensor, h3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = self.config.attention_levels
        if len(keep) < 3:  # ablation: a removed level is zero, so it adds nothing and passes no gradient back
            h1, h2, h3 = (h if i + 1 in keep else torch.zeros_like(h) for i, h in enumerate((h1, h2, h3)))
        if self.config.level_gate:
            logits = self.gate(h1, h2, h3)  # (B, T, 3); a tensor-parallel gate takes the same call
        else:  # ablation: sigmoid(0) = 1/2 for every level
            logits = h1.new_zeros(*h1.shape[:-1], 3, dtype=torch.float32)
        fused, alpha = gated_sum(h1, h2, h3, logits)  # alpha: (B, T, 3)
        return self.o_proj(fused), alpha

    def forward(
        self, hidden_states: torch.Tensor, past_key_values: Cache | None = None, layout: TokenLayout | None = None
    ) -> torch.Tensor:
        out, _ = self.fuse(*self.levels(hidden_states, past_key_values, layout))
        return out


class R1DecoderLayer(nn.Module):
    """Pre-norm block: x + DropPath(attn(norm(x))), then x + DropPath(mlp(norm(x)))."""

    def __init__(self, config: R1Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = R1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = R1HierarchicalAttention(config, layer_idx)
        self.post_attention_layernorm = R1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = R1MLP(config)
        self.drop_path = DropPath(0.0)

    def forward(
        self, hidden_states: torch.Tensor, past_key_values: Cache | None = None, layout: TokenLayout | None = None
    ) -> torch.Tensor:
        h = hidden_states + self.drop_path(self.self_attn(self.input_layernorm(hidden_states), past_key_values, layout))
        return h + self.drop_path(self.mlp(self.post_attention_layernorm(h)))


def set_drop_path_rate(module: nn.Module, rate: float, num_hidden_layers: int) -> None:
    """Set the DropPath rate of every decoder block in `module` (a whole model, a tensor-parallel one or a
    pipeline stage holding some of the `num_hidden_layers` blocks): block l of L (counted from 1) gets
    rate * l / L, so deeper blocks are dropped more often (stochastic depth). The one owner of the per-block
    rule; the trainer's schedule (r1_ds/schedule.py) raises `rate` linearly over training."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop path rate {rate!r} must be in [0, 1)")
    for layer in module.modules():
        if isinstance(layer, R1DecoderLayer):
            layer.drop_path.rate = rate * (layer.layer_idx + 1) / num_hidden_layers


class R1PreTrainedModel(PreTrainedModel):
    config_class = R1Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["R1DecoderLayer"]
    _supports_flex_attn = True
    _supports_sdpa = False  # no SDPA variant: "eager" is the reference, "flex_attention" the fast path
    _supports_flash_attn = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Depth-scaled init (config.init_scheme == "depth_scaled"): a linear layer inside decoder
        block l (l = 1 .. L, counted from the input) gets Var(W) = 1 / (fan_in * 2^l); everything
        outside the blocks, and every weight under "normal", gets N(0, initializer_range^2)."""
        c = self.config
        if isinstance(module, (nn.Linear, R1LevelGate)):
            depth = getattr(module, "_r1_depth", None)
            if c.init_scheme == "depth_scaled" and depth is not None:
                std = 1.0 / math.sqrt(module.in_features * 2.0**depth)
            else:
                std = c.initializer_range
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, R1LevelGate):
                module.weight[module.rows :].zero_()  # the alignment padding stays inert
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=c.initializer_range)
        elif isinstance(module, R1RMSNorm):
            nn.init.ones_(module.weight)

    def save_pretrained(self, *args, **kwargs):
        # Every head in auto_map, whichever is saved: the folder then loads with trust_remote_code as AutoModel,
        # AutoModelForCausalLM or AutoModelForSequenceClassification (save_pretrained adds only its own class).
        heads = {
            "AutoModel": "R1Model",
            "AutoModelForCausalLM": "R1ForCausalLM",
            "AutoModelForSequenceClassification": "R1ForSequenceClassification",
        }
        module = type(self).__module__.split(".")[-1]
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            **{auto: f"{module}.{cls}" for auto, cls in heads.items()},
        }
        return super().save_pretrained(*args, **kwargs)

    def set_drop_path_rate(self, rate: float) -> None:
        """Set the DropPath rate (the trainer calls this as training progresses); per block as
        `set_drop_path_rate` above."""
        set_drop_path_rate(self, rate, self.config.num_hidden_layers)
        self.config.drop_path_rate = rate

    def set_attn_implementation(self, attn_implementation: str, allow_all_kernels: bool = False) -> None:
        """Select the attention kernels: "eager" (the reference) or "flex_attention" (the CUDA fast path);
        any other value is a ValueError. The one place that sets `config._attn_implementation` after
        loading (transformers' own method only warns for a model without its attention interface).
        `allow_all_kernels` is transformers' argument for Hub kernels, which R1 does not use."""
        self.config._attn_implementation = check_attn_implementation(attn_implementation)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """transformers' check at construction (`from_pretrained(..., attn_implementation=...)`), narrowed to
        R1's kernels; no request is the eager reference."""
        name = check_attn_implementation("eager" if requested_attention is None else requested_attention)
        if name == "flex_attention":
            self._flex_attn_can_dispatch(is_init_check)
        return name


class R1Model(R1PreTrainedModel):
    def __init__(self, config: R1Config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(R1DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = R1RMSNorm(config.hidden_size, config.rms_norm_eps)
        for i, layer in enumerate(self.layers):  # depth tags read by _init_weights
            for m in layer.modules():
                if isinstance(m, (nn.Linear, R1LevelGate)):
                    m._r1_depth = i + 1
        self.gradient_checkpointing = False
        self.post_init()
        self.set_drop_path_rate(config.drop_path_rate)

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """position_ids come through kwargs: left out of the signature, generate() does not derive them
        from the mask (its right-padding ids restart after the pads); given, token_layout checks them."""
        past_key_values = _take_cache(past_key_values, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("R1Model.forward: pass exactly one of input_ids and inputs_embeds")
        if output_attentions:
            raise ValueError(
                "R1Model: output_attentions is not available: each token attends over three levels "
                "with different keys (tokens, paragraph and document summaries), not one T x T map. "
                "Fix: leave output_attentions unset."
            )
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None and not self.training:
            past_key_values = DynamicCache(config=self.config)
        if not use_cache:
            past_key_values = None
        past = 0 if past_key_values is None else past_key_values.get_seq_length()
        if past and getattr(past_key_values, "r1_packed", False):
            raise ValueError(
                "R1: this cache holds packed documents (position_ids restarting at 0); it cannot be "
                "continued. Fix: generate from each document on its own."
            )
        layout = token_layout(
            attention_mask, kwargs.get("position_ids"), batch=h.shape[0], past=past, new=h.shape[1], device=h.device
        )
        if layout is not None and layout.packed and past_key_values is not None:
            past_key_values.r1_packed = True
        hidden_states = []
        for layer in self.layers:
            if output_hidden_states:
                hidden_states.append(h)
            if self.gradient_checkpointing and self.training:
                h = self._gradient_checkpointing_func(layer.__call__, h, None, layout)
            else:
                h = layer(h, past_key_values, layout)
        h = self.norm(repeat_last_token(h, layout))
        if output_hidden_states:
            hidden_states.append(h)  # as in HF models: the embeddings, each block's output, the last one normed
        return BaseModelOutputWithPast(
            last_hidden_state=h, hidden_states=tuple(hidden_states) or None, **{_CACHE_FIELD: past_key_values}
        )


class R1ForCausalLM(R1PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: R1Config):
        super().__init__(config)
        self.model = R1Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        num_items_in_batch=None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        past_key_values = _take_cache(past_key_values, kwargs)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        h = out.last_hidden_state
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.config.label_smoothing, num_items_in_batch)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, **{_CACHE_FIELD: getattr(out, _CACHE_FIELD)}
        )


class R1ForSequenceClassification(R1PreTrainedModel):
    """Classification / regression head on the last non-pad token (GLUE)."""

    def __init__(self, config: R1Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = R1Model(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.score(out.last_hidden_state)  # (B, T, C)
        B, T = logits.shape[:2]
        if attention_mask is not None:  # the last unmasked token, whichever side the padding is on
            last = (attention_mask.long() * torch.arange(T, device=logits.device)).argmax(-1)
        elif input_ids is not None and self.config.pad_token_id is not None:
            is_tok = (input_ids != self.config.pad_token_id).long()
            last = (is_tok * torch.arange(T, device=logits.device)).argmax(-1)
        else:
            last = torch.full((B,), T - 1, device=logits.device)
        pooled = logits[torch.arange(B, device=logits.device), last]
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(pooled.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(pooled.float(), labels.view(-1))
        return SequenceClassifierOutputWithPast(loss=loss, logits=pooled, hidden_states=out.hidden_states)
