"""The `align` section of the training config (docs/alignment.md): the cross-modal alignment objective."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AlignSettings:
    objective: str = "lm"
    """"lm": language modelling only (no alignment); "align": the alignment loss alone; "lm+align": the LM loss
    plus `weight` times the alignment loss."""
    triples: str | None = None
    """triples.jsonl written by `r1-ds prep` (OUT/triples/triples.jsonl), or the prep folder OUT itself."""
    kinds: list = field(default_factory=list)
    """Triple kinds to train and evaluate on (image-text-code, image-text, text-code); empty: all."""
    tokenizer: str | None = None
    """Tokenizer folder for text and code; empty: the prep folder's tokenizer/ (beside triples/)."""
    weight: float = 1.0
    """Weight of the alignment loss when added to the LM loss (objective lm+align)."""
    image_tower: str = "ViT-B-32"
    """open_clip model whose (frozen) vision tower embeds the images."""
    image_tower_checkpoint: str | None = None
    """Local checkpoint file of that model (its CLIP state dict or the vision tower's); empty: random init (warns)."""
    image_size: int | None = None
    """Input size of the tower; empty: the model's own (e.g. 224)."""
    use_views: bool = True
    """Train on a random one of the image and its augmented views (triples' image_views); held-out uses the image."""
    image_repeats: int = 1
    """Each training row with an image is sampled this many times per epoch (rows without one once): more image
    rows per batch where text-code pairs outnumber the images."""
    proj_dim: int = 128
    """Size of the shared embedding."""
    image_hidden: int = 512
    """Hidden width of the image head (0: a linear head)."""
    text_len: int = 64
    """Text tokens kept per row."""
    code_len: int = 128
    """Code tokens kept per row."""
    init_temperature: float = 0.07
    """Initial temperature of every pair."""
    min_temperature: float = 0.01
    """Lower bound of the learnable temperatures."""
    max_temperature: float = 1.0
    """Upper bound of the learnable temperatures."""
    held_out_percent: float = 20.0
    """Share of rows (by a hash of the id) held out for retrieval metrics."""
    eval_every: int = 50
    """Held-out retrieval R@1 / R@5 every N optimizer steps (and at the end)."""
    eval_rows: int = 256
    """At most this many held-out rows per pair in the retrieval metrics."""
    mine_every: int = 10
    """Update the MINE estimators every N optimizer steps."""
    mine_steps: int = 20
    """Critic steps per update, on mini-batches drawn from the recent features."""
    mine_batch: int = 128
    """Critic mini-batch."""
    mine_buffer: int = 2048
    """Recent projected feature pairs kept per modality pair for MINE."""
    mine_variant: str = "mine"
    """"mine" (DV bound with the moving-average gradient) or "smile" (clipped DV, JS-trained critic)."""
    mine_warmup: int = 20
    """Optimizer steps before the weights follow the estimates (all 1 until then)."""
    mine_smoothing: float = 0.5
    """Estimates are smoothed as e <- s e + (1 - s) new before they set the weights."""
    weight_temperature: float = 1.0
    """w_p = P softmax(-I_p / weight_temperature), clipped to [weight_min, weight_max]."""
    weight_min: float = 0.5
    """Lower bound of a pair weight."""
    weight_max: float = 2.0
    """Upper bound of a pair weight."""

    @property
    def enabled(self) -> bool:
        return self.objective != "lm"


def validate_align(a: AlignSettings, fail) -> None:
    """Check the section; `fail(name, value, rule, fix)` raises the config error."""
    if a.objective not in ("lm", "align", "lm+align"):
        fail("align.objective", a.objective, "must be lm, align or lm+align", "pick one of the three")
    if a.enabled and not a.triples:
        fail(
            "align.triples",
            a.triples,
            f"is required with align.objective={a.objective}",
            "point it at the prep folder (or its triples/triples.jsonl)",
        )
    if not isinstance(a.kinds, list):
        fail("align.kinds", a.kinds, "must be a list", "write e.g. --set align.kinds=[image-text-code]")
    unknown = sorted(set(a.kinds) - {"image-text-code", "image-text", "text-code"})
    if unknown:
        fail("align.kinds", a.kinds, f"names unknown kinds {unknown}", "use image-text-code, image-text, text-code")
    if not a.weight > 0:
        fail("align.weight", a.weight, "must be > 0", "use e.g. 1.0")
    if not 0 < a.min_temperature <= a.init_temperature <= a.max_temperature:
        fail(
            "align.init_temperature",
            a.init_temperature,
            f"must lie in [min_temperature={a.min_temperature}, max_temperature={a.max_temperature}], min > 0",
            "use e.g. 0.01 <= 0.07 <= 1.0",
        )
    if not 0 < a.held_out_percent < 100:
        fail("align.held_out_percent", a.held_out_percent, "must be in (0, 100)", "use e.g. 20")
    if a.mine_variant not in ("mine", "smile"):
        fail("align.mine_variant", a.mine_variant, "must be mine or smile", "pick one")
    if not 0 < a.weight_min <= 1 <= a.weight_max:
        fail(
            "align.weight_min/weight_max",
            (a.weight_min, a.weight_max),
            "need 0 < weight_min <= 1 <= weight_max",
            "use e.g. 0.5 and 2.0",
        )
    if not 0 <= a.mine_smoothing < 1:
        fail("align.mine_smoothing", a.mine_smoothing, "must be in [0, 1)", "use e.g. 0.5")
    for name in (
        "image_repeats",
        "eval_every",
        "eval_rows",
        "mine_every",
        "mine_steps",
        "mine_batch",
        "mine_buffer",
        "proj_dim",
        "text_len",
        "code_len",
    ):
        if getattr(a, name) < 1:
            fail(f"align.{name}", getattr(a, name), "must be >= 1", "use a positive integer")
