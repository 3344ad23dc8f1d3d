"""Configuration of the R1 hierarchical-attention language model.

Only architecture lives here (it is serialised into ``config.json``); training settings live in
``r1_ds.config``. Every field is checked in ``validate()``, and each error names the field, the
value, the rule and a fix.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

# Named sizes. Parameter counts are for vocab 50304 with tied embeddings (see docs/architecture.md).
L2_ROUTINGS = ("paragraph", "token", "summary")
L2_PROJECTIONS = ("shared", "separate")

PRESETS: dict[str, dict] = {
    # GPU sizes use 128-token paragraphs: one paragraph is one FlexAttention tile on Hopper.
    # CPU tests and the demo: runs a training step in milliseconds.
    "tiny": dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        level_heads=(2, 4, 8),
        local_window=16,
        paragraph_size=8,
        document_size=32,
        route_top_k=2,
        max_position_embeddings=256,
        vocab_size=512,
    ),
    "125m": dict(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        level_heads=(6, 12, 24),
        paragraph_size=128,
        document_size=1024,
        max_position_embeddings=2048,
    ),
    "350m": dict(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=24,
        level_heads=(8, 16, 32),
        paragraph_size=128,
        document_size=1024,
        max_position_embeddings=2048,
    ),
    "1.3b": dict(
        hidden_size=2048,
        intermediate_size=5504,
        num_hidden_layers=24,
        level_heads=(8, 16, 32),
        paragraph_size=128,
        document_size=1024,
        max_position_embeddings=2048,
    ),
}

# The attention kernels R1HierarchicalAttention dispatches on: "eager" is the reference (any device),
# "flex_attention" the CUDA fast path. R1 has no SDPA or FlashAttention variant (three levels of keys).
ATTN_IMPLEMENTATIONS = ("eager", "flex_attention")


def check_attn_implementation(name) -> str:
    """`name` if R1 has that attention implementation, else a ValueError naming the value, the choices and
    the fix (any other value would run the eager path without a word)."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={name!r} is not an R1 attention implementation: R1 has "
            f"{', '.join(ATTN_IMPLEMENTATIONS)} (three attention levels, no SDPA or FlashAttention "
            'variant). Fix: pass "eager" (the reference, any device) or "flex_attention" (the CUDA '
            "fast path)."
        )
    return name


class R1ConfigError(ValueError):
    """A config field breaks a rule; the message names the field, the value, the rule and a fix."""


class R1Config(PretrainedConfig):
    r"""Architecture of an R1 model.

    Hierarchical attention has three levels over token groups (see docs/architecture.md):
      L1 short range: causal sliding window of ``local_window`` tokens, ``level_heads[0]`` heads;
      L2 paragraph range: summaries (mean-pooled keys/values) of the last ``document_size //
         paragraph_size`` complete paragraphs of ``paragraph_size`` tokens, plus the tokens of up to
         ``route_top_k`` earlier paragraphs chosen by entropy-based routing, ``level_heads[1]`` heads;
      L3 document range: summaries of every complete document group of ``document_size`` tokens,
         ``level_heads[2]`` heads.
    A sigmoid gate ``alpha = sigmoid(W_g [h_L1; h_L2; h_L3] + b_g)`` weighs the levels per token.

    Ablations (docs/quality.md): ``attention_levels`` keeps a subset of the levels (a removed level's
    output is zero before the gate, so it adds nothing and passes no gradient back); ``level_gate=False``
    replaces the learned gate by fixed equal weights (alpha_i = sigmoid(0) = 1/2; the gate's weights
    stay in the model, unused, so checkpoints keep one layout).

    Research options for L2 (docs/quality.md, "What L2 needs to copy"), computed by the eager reference on whole
    sequences only (no cache, no packed rows, no tensor parallelism; other paths refuse them):
    ``l2_routing="token"`` routes every query token by its own query against the earlier complete paragraphs'
    mean keys (same entropy rule and top-k) instead of every query paragraph by the previous paragraph's mean
    query; ``l2_routing="summary"`` gives every query token the summaries of every earlier complete paragraph as L2
    keys and routes it by its own (trained) attention scores over them, as NSA's selection reads its compression
    branch; ``l2_projections="separate"`` gives L2 its own q/k/v projections instead of viewing the one the levels
    share.
    """

    model_type = "r1_ds"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 50304,  # tokenizer size (padded to a multiple of 64 for fast matmuls)
        hidden_size: int = 1024,  # model width d
        intermediate_size: int = 2816,  # SwiGLU hidden width
        num_hidden_layers: int = 24,  # decoder blocks
        level_heads: tuple[int, int, int] | list[int] = (8, 16, 32),  # heads of L1/L2/L3; each divides d
        local_window: int = 128,  # L1: tokens a query sees at full resolution, itself included
        paragraph_size: int = 64,  # L2: tokens per paragraph (summary and routing unit)
        document_size: int = 512,  # L3: tokens per document group; a multiple of paragraph_size
        route_top_k: int = 4,  # L2: most paragraphs routed to at token resolution per query block
        max_position_embeddings: int = 2048,  # longest context trained on (RoPE works beyond it)
        rope_theta: float = 10000.0,  # RoPE base
        rms_norm_eps: float = 1e-6,  # RMSNorm epsilon
        initializer_range: float = 0.02,  # std of the "normal" init scheme
        init_scheme: str = "depth_scaled",  # "depth_scaled": Var(W_l) = 1/(fan_in * 2^l); "normal": N(0, initializer_range^2)
        label_smoothing: float = 0.0,  # of model(labels=...)'s loss; 0: plain cross entropy (the trainer sets its own)
        drop_path_rate: float = 0.0,  # DropPath rate now; the trainer raises it during training
        attention_levels: tuple[int, ...] | list[int] = (1, 2, 3),  # levels that contribute (ablation: e.g. [1])
        level_gate: bool = True,  # learned level gate; False: fixed alpha = 1/2 for every level (ablation)
        l2_routing: str = "paragraph",  # "paragraph" (every path); "token" or "summary" (eager only: research)
        l2_projections: str = "shared",  # "shared" (every path) or "separate" (eager reference only: research)
        tie_word_embeddings: bool = True,  # share embedding and LM-head weights
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.level_heads = list(level_heads)
        self.local_window = local_window
        self.paragraph_size = paragraph_size
        self.document_size = document_size
        self.route_top_k = route_top_k
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.init_scheme = init_scheme
        self.label_smoothing = label_smoothing
        self.drop_path_rate = drop_path_rate
        self.attention_levels = list(attention_levels)
        self.level_gate = level_gate
        self.l2_routing = l2_routing
        self.l2_projections = l2_projections
        self.use_cache = use_cache
        # HF generic code looks for this name (e.g. to size caches); it is the widest level's count.
        self.num_attention_heads = max(self.level_heads) if self.level_heads else 1
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> R1Config:
        """A named size ("tiny", "125m", "350m", "1.3b"), with any field overridden."""
        if name not in PRESETS:
            raise R1ConfigError(
                f"model preset {name!r} is unknown; choose one of {sorted(PRESETS)} "
                "or pass the fields yourself (R1Config(hidden_size=..., ...))."
            )
        return cls(**{**PRESETS[name], **overrides})

    def validate(self) -> None:
        def fail(field, value, rule, fix):
            raise R1ConfigError(f"R1Config.{field}={value!r}: {rule}. Fix: {fix}.")

        d = self.hidden_size
        for field in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "local_window",
            "paragraph_size",
            "document_size",
            "max_position_embeddings",
        ):
            v = getattr(self, field)
            if not isinstance(v, int) or v <= 0:
                fail(field, v, "must be a positive integer", f"set {field} to a positive integer")
        if len(self.level_heads) != 3:
            fail(
                "level_heads",
                self.level_heads,
                "needs exactly three head counts (L1, L2, L3)",
                "pass e.g. level_heads=[8, 16, 32]",
            )
        for i, h in enumerate(self.level_heads):
            if not isinstance(h, int) or h <= 0 or d % h:
                fail(
                    "level_heads",
                    self.level_heads,
                    f"level {i + 1} has {h} heads, which must be a positive divisor of hidden_size={d}",
                    f"use a head count that divides {d}",
                )
            if (d // h) % 2:
                fail(
                    "level_heads",
                    self.level_heads,
                    f"level {i + 1} head size {d}/{h}={d // h} must be even for rotary embeddings",
                    "choose head counts giving an even head size",
                )
        rope = math.gcd(*self.head_dims)
        if rope < 8:
            fail(
                "level_heads",
                self.level_heads,
                f"the head sizes must share a factor of at least 8: rotary runs once over chunks of "
                f"gcd(head sizes) = {rope} channels, fewer than 4 rotary frequencies per head",
                "choose head counts whose head sizes share a factor of at least 8 (e.g. 8/16/32)",
            )
        if self.paragraph_size < 2:
            fail(
                "paragraph_size",
                self.paragraph_size,
                "must be at least 2 (a one-token paragraph's summary is the token itself, which L1 already sees)",
                "use e.g. paragraph_size=64",
            )
        if self.document_size % self.paragraph_size:
            fail(
                "document_size",
                self.document_size,
                f"must be a multiple of paragraph_size={self.paragraph_size} (documents are made of whole paragraphs)",
                f"use e.g. document_size={self.paragraph_size * max(1, round(self.document_size / self.paragraph_size))}",
            )
        if self.local_window > self.max_position_embeddings:
            fail(
                "local_window",
                self.local_window,
                f"must not exceed the context, max_position_embeddings={self.max_position_embeddings}",
                "use a window no larger than the context, or raise max_position_embeddings",
            )
        if self.paragraph_size > self.max_position_embeddings:
            fail(
                "paragraph_size",
                self.paragraph_size,
                f"must not exceed the context, max_position_embeddings={self.max_position_embeddings}",
                "use paragraphs shorter than the context",
            )
        if not isinstance(self.route_top_k, int) or self.route_top_k < 0:
            fail(
                "route_top_k",
                self.route_top_k,
                "must be an integer >= 0 (0 turns routing off)",
                "use e.g. route_top_k=4",
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            fail("label_smoothing", self.label_smoothing, "must be in [0, 1)", "use e.g. 0.1")
        if not 0.0 <= self.drop_path_rate < 1.0:
            fail("drop_path_rate", self.drop_path_rate, "must be in [0, 1)", "use e.g. 0.1")
        levels = self.attention_levels
        if (
            not levels
            or any(not isinstance(x, int) or x not in (1, 2, 3) for x in levels)
            or list(levels) != sorted(set(levels))
        ):
            fail(
                "attention_levels",
                levels,
                "must be a non-empty, sorted list of distinct levels from 1, 2, 3",
                "use e.g. [1, 2, 3] (all), [1] (window only) or [1, 3]",
            )
        if not isinstance(self.level_gate, bool):
            fail(
                "level_gate",
                self.level_gate,
                "must be true or false",
                "use level_gate=True (learned gate) or False (fixed equal weights)",
            )
        if self.l2_routing not in L2_ROUTINGS:
            fail("l2_routing", self.l2_routing, f"must be one of {L2_ROUTINGS}", "use 'paragraph' (the default)")
        if self.l2_projections not in L2_PROJECTIONS:
            fail(
                "l2_projections", self.l2_projections, f"must be one of {L2_PROJECTIONS}", "use 'shared' (the default)"
            )
        if self.init_scheme not in ("depth_scaled", "normal"):
            fail("init_scheme", self.init_scheme, "must be 'depth_scaled' or 'normal'", "pick one of the two")
        if self.rope_theta <= 0 or not math.isfinite(self.rope_theta):
            fail("rope_theta", self.rope_theta, "must be a positive finite number", "use e.g. 10000.0")

    @property
    def l2_research(self) -> bool:
        """True when an L2 research option is on (the eager reference alone computes it)."""
        return self.l2_routing != "paragraph" or self.l2_projections != "shared"

    @property
    def head_dims(self) -> list[int]:
        """Head size of each level (hidden_size // heads)."""
        return [self.hidden_size // h for h in self.level_heads]
