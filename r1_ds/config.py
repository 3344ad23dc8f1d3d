"""Training settings: small dataclasses, loaded from a YAML/JSON file plus command-line overrides.

Precedence, highest first (docs/training.md, "Settings"):
    1. the command line (`--steps 100`, `--set schedule.lr=3e-4`),
    2. the training config file (`--config run.yaml`),
    3. the DeepSpeed JSON (`--deepspeed_config ds_configs/x.json`), for the few values both know:
       micro-batch, global batch, gradient-accumulation steps and the optimizer's learning rate.
The DeepSpeed JSON stays DeepSpeed's: everything else in it (ZeRO, precision, clipping, optimizer)
is passed through; our own options never go into it (except `"apex"` and `"r1_compression"`,
which are read and removed before DeepSpeed sees the JSON).

`resolve_batch` is the one start-up check that batch sizes, accumulation and layout agree.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .align.settings import AlignSettings, validate_align
from .model.configuration_r1 import ATTN_IMPLEMENTATIONS
from .parallel.topology import LayoutError, ParallelDims


class ConfigError(ValueError):
    """A training setting is invalid; the message names it, the rule and the fix."""


class BatchSizeError(ConfigError):
    """train_batch_size != micro_batch * grad_accum * data_parallel_size (the message shows the numbers)."""


# ----------------------------------------------------------------------------- settings


@dataclass
class ModelSettings:
    preset: str = "tiny"
    """R1 size: "tiny", "125m", "350m" or "1.3b" (r1_ds.model.PRESETS)."""
    overrides: dict = field(default_factory=dict)
    """R1Config fields that replace the preset's (e.g. {"num_hidden_layers": 4})."""
    attn_implementation: str = "auto"
    """"eager" (reference, CPU), "flex_attention" (CUDA fast path) or "auto" (flex on CUDA, else eager)."""
    activation_checkpoint_interval: int = 0
    """Recompute activations of every block of N decoder layers in the backward pass (0: off)."""
    init_from: str | None = None
    """Start from the weights of a Hugging Face folder (e.g. `r1-ds export` output) instead of a fresh init."""
    compile: bool = False
    """torch.compile every decoder block in place (torchtitan-style), after tensor-parallel sharding and before
    DeepSpeed wraps the model: fewer kernel launches and Python overhead per step; the first steps include the
    compile time. ZeRO-3 is refused with it (its parameter hooks do not compose with compiled blocks), and so are
    sequences longer than 8,192 tokens on the GPU's FlexAttention path (check_compiled_length, below)."""


@dataclass
class DataSettings:
    path: list | str | None = None
    """Packed shard folder (meta.json + shard_*.bin); empty or "synthetic": built-in synthetic data; a list of
    folders or of {path, weight}: a mixture (checked by r1_ds.data.open_dataset)."""
    seq_len: int | None = None
    """Tokens per training sequence; empty: the shards' seq_len (synthetic: 128)."""
    micro_batch: int | None = None
    """Sequences per rank per micro-step; empty: the DeepSpeed JSON's train_micro_batch_size_per_gpu."""
    synthetic_sequences: int = 4096
    """Size of the synthetic data set."""


@dataclass
class StageSettings:
    global_batch: int = 0
    """Sequences per optimizer step over all data-parallel ranks in this stage."""
    steps: int | None = None
    """Optimizer steps in this stage; empty for the last stage: until schedule.steps."""
    data_fraction: float = 1.0
    """The stage samples from the first `data_fraction` of the data set (0 < f <= 1)."""


@dataclass
class ScheduleSettings:
    steps: int = 100
    """Optimizer steps of the whole run."""
    lr: float | None = None
    """Peak learning rate; empty: the DeepSpeed JSON optimizer's lr."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio at the last step."""
    warmup_steps: int = 0
    """Linear warm-up from lr / warmup_steps to lr over this many steps."""
    global_batch: int | None = None
    """Sequences per optimizer step (train_batch_size); empty: the DeepSpeed JSON's."""
    grad_accum: int | None = None
    """Micro-steps per optimizer step; empty: derived from the global and micro batch."""
    drop_path_max: float = 0.0
    """DropPath rate reached at the last step; it grows linearly from 0 with training progress."""
    label_smoothing: float = 0.1
    """Label smoothing of the training loss (set on the model being trained; an export ships 0: plain cross entropy)."""
    stages: list[StageSettings] = field(default_factory=list)
    """Progressive training: stages run in order inside one job (empty: one stage, the whole data)."""


@dataclass
class CheckpointSettings:
    dir: str | None = None
    """Checkpoint folder; empty: <output_dir>/checkpoints."""
    every: int = 0
    """Save every N optimizer steps (0: only at the end)."""
    resume: str = "auto"
    """"auto": resume from dir's latest checkpoint if there is one; "none": start fresh; or a checkpoint folder."""
    keep: int = 0
    """Keep only the newest N checkpoints (0: keep all)."""
    trust: bool = False
    """Unpickle checkpoints as they are (true) instead of weights-only with an allowlist: only for checkpoints from a
    source you trust, since a crafted .pt file runs code when unpickled (docs/fault_tolerance.md)."""


@dataclass
class ParallelSettings:
    pipe: int = 1
    """Pipeline stages (DeepSpeed PipelineEngine when > 1; ZeRO stage 0 or 1 only)."""
    tensor: int = 1
    """Tensor-parallel shards per stage."""
    data: int = 0
    """Data-parallel replicas; 0: world_size / (pipe * tensor)."""
    partition: str = "type:R1DecoderLayer"
    """How layers are split over stages: "type:R1DecoderLayer" (equal decoder layers), "parameters", "uniform"."""


@dataclass
class PrecisionSettings:
    dtype: str | None = None
    """"bf16", "fp16" or "fp32"; empty: whatever the DeepSpeed JSON enables."""
    apex: dict | None = None
    """An Apex AMP block ({"opt_level": "O2", "loss_scale": "dynamic", ...}) translated to DeepSpeed settings."""
    loss_scale_policy: dict | None = None
    """fp16 only: {"type": "exponent", "k": 13, "interval": 1} sets S = 2^(k - max_exponent) (docs/training.md)."""


@dataclass
class LogSettings:
    every: int = 1
    """Write metrics every N optimizer steps."""
    tensorboard: bool = True
    """Write TensorBoard events to <output_dir>/tensorboard."""
    progress: bool = True
    """Show a progress bar on rank 0."""
    peak_tflops: float | None = None
    """Peak dense TFLOP/s of one device for MFU; empty: looked up from the GPU name (none on CPU)."""
    eval_every: int = 0
    """Held-out loss (plain cross entropy) every N optimizer steps (a multiple of every), logged as heldout_loss
    (0: off)."""
    eval_data: str | None = None
    """Packed shard folder of the held-out set (needed when eval_every > 0)."""
    eval_sequences: int = 64
    """Held-out sequences per evaluation (whole micro-batches, at least one)."""
    check_finite_every: int = 1
    """Check every N steps (and before every save) that the loss and gradient norm are finite; a run that diverged
    stops there without saving (one all-reduce of N flags per check)."""


@dataclass
class TrainConfig:
    deepspeed_config: str = "ds_configs/tiny_cpu.json"
    """DeepSpeed JSON (under `accelerate launch`: the file accelerate was given, when this is not set)."""
    output_dir: str = "runs/r1"
    """Run folder: metrics.jsonl, tensorboard/, checkpoints/, resolved configs."""
    seed: int = 1234
    """Seeds model init, data order and DropPath (all derived from it deterministically)."""
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    precision: PrecisionSettings = field(default_factory=PrecisionSettings)
    log: LogSettings = field(default_factory=LogSettings)
    align: AlignSettings = field(default_factory=AlignSettings)
    """Cross-modal alignment objective on image-text-code triples (docs/alignment.md); off by default."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- loading


def read_mapping(path: str) -> dict:
    """A YAML or JSON file as a dict (YAML when the name ends in .yaml/.yml)."""
    if not os.path.isfile(path):
        raise ConfigError(
            f"config file {path!r} does not exist. Fix: pass an existing file (see ds_configs/ and "
            "docs/training.md for examples)."
        )
    with open(path) as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as err:  # noqa: BLE001 - any parse error becomes one readable message
        raise ConfigError(f"config file {path!r} does not parse: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def _build(cls, data: dict, where: str):
    """Dataclass `cls` from a dict, refusing unknown keys (typos) with the list of known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'training config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or 'the training config'}; known keys: "
            f"{sorted(fields)}. Fix: correct the spelling or remove them."
        )
    kwargs = {}
    for name, value in data.items():
        sub = _SECTIONS.get((cls, name))
        path = f"{where}.{name}" if where else name
        if sub is StageSettings:
            if not isinstance(value, list):
                raise ConfigError(f"{path} must be a list of stages, got {value!r}")
            value = [_build(StageSettings, v, f"{path}[{i}]") for i, v in enumerate(value)]
        elif sub is not None:
            value = _build(sub, value or {}, path)
        else:
            _check_type(path, value, fields[name])
        kwargs[name] = value
    return cls(**kwargs)


def _check_type(path: str, value: Any, field: dataclasses.Field) -> None:
    """A scalar setting must have its field's type (ints may stand for floats; None where allowed)."""
    hint = str(field.type)
    if value is None:
        if "None" not in hint:
            raise ConfigError(f"{path}=null: a value is required ({hint}). Fix: give a value or remove the key.")
        return
    name = hint.split(" |")[0]
    if name in _SCALARS:
        types, example = _SCALARS[name]
        if not isinstance(value, types) or (name != "bool" and isinstance(value, bool)):
            raise ConfigError(f"{path}={value!r}: must be of type {name}. Fix: write e.g. {path}={example}.")


_SCALARS = {"bool": ((bool,), "true"), "int": ((int,), "100"), "float": ((int, float), "0.1"), "str": ((str,), "text")}


_SECTIONS = {
    (TrainConfig, "model"): ModelSettings,
    (TrainConfig, "data"): DataSettings,
    (TrainConfig, "schedule"): ScheduleSettings,
    (TrainConfig, "checkpoint"): CheckpointSettings,
    (TrainConfig, "parallel"): ParallelSettings,
    (TrainConfig, "precision"): PrecisionSettings,
    (TrainConfig, "log"): LogSettings,
    (ScheduleSettings, "stages"): StageSettings,
    (TrainConfig, "align"): AlignSettings,
}


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """data["a"]["b"] = value for "a.b" (creating sections on the way)."""
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    data[keys[-1]] = value


def parse_set(item: str) -> tuple[str, Any]:
    """ "schedule.lr=3e-4" -> ("schedule.lr", 0.0003); the value is read as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set schedule.warmup_steps=100")
    key, raw = item.split("=", 1)
    import yaml

    return key.strip(), yaml.safe_load(raw)


def _model_fields() -> set[str]:
    """Fields an R1 model override may set: R1Config's own and PretrainedConfig's generic ones."""
    import inspect

    from transformers import PretrainedConfig

    from .model.configuration_r1 import R1Config

    own = set(inspect.signature(R1Config.__init__).parameters) - {"self", "kwargs"}
    return own | set(PretrainedConfig().to_dict())


def load_dataclass(cls, path: str | None = None, overrides: dict | None = None):
    """File (if any), then dotted overrides, into the settings dataclass `cls` (training, and `r1-ds prep`)."""
    data = read_mapping(path) if path else {}
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return _build(cls, data, "")


def load_train_config(path: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """File (if any), then dotted overrides (CLI), into a TrainConfig."""
    cfg = load_dataclass(TrainConfig, path, overrides)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    def fail(name, value, rule, fix):
        raise ConfigError(f"{name}={value!r}: {rule}. Fix: {fix}.")

    # _model_fields imports transformers: only when there is something to check
    unknown = sorted(set(cfg.model.overrides) - _model_fields()) if cfg.model.overrides else []
    if unknown:  # R1Config, like any PretrainedConfig, would keep a typo as a stray attribute and ignore it
        fail(
            "model.overrides",
            unknown,
            "names fields R1Config does not have",
            "spell them as in docs/architecture.md (e.g. num_hidden_layers, hidden_size, level_heads)",
        )
    if cfg.checkpoint.keep < 0:
        fail("checkpoint.keep", cfg.checkpoint.keep, "must be >= 0 (0 keeps every checkpoint)", "use e.g. 3")

    s = cfg.schedule
    if s.steps < 1:  # types were checked when the settings were read
        fail("schedule.steps", s.steps, "must be an integer >= 1", "set the number of optimizer steps")
    if not 0 <= s.warmup_steps < s.steps:  # s.steps >= 1 here
        fail(
            "schedule.warmup_steps",
            s.warmup_steps,
            f"must be in [0, schedule.steps={s.steps})",
            "use a shorter warm-up",
        )
    if not 0.0 <= s.min_lr_ratio <= 1.0:
        fail("schedule.min_lr_ratio", s.min_lr_ratio, "must be in [0, 1]", "use e.g. 0.1")
    if not 0.0 <= s.drop_path_max < 1.0:
        fail("schedule.drop_path_max", s.drop_path_max, "must be in [0, 1)", "use e.g. 0.1")
    if not 0.0 <= s.label_smoothing < 1.0:
        fail("schedule.label_smoothing", s.label_smoothing, "must be in [0, 1)", "use e.g. 0.1")
    if s.lr is not None and not s.lr > 0:
        fail("schedule.lr", s.lr, "must be > 0", "use e.g. 3e-4")
    for i, st in enumerate(s.stages):
        name = f"schedule.stages[{i}]"
        if st.global_batch < 1:
            fail(f"{name}.global_batch", st.global_batch, "must be an integer >= 1", "set the stage's global batch")
        if not 0.0 < st.data_fraction <= 1.0:
            fail(f"{name}.data_fraction", st.data_fraction, "must be in (0, 1]", "use e.g. 0.25 for the first quarter")
        if st.steps is None and i != len(s.stages) - 1:
            fail(f"{name}.steps", None, "only the last stage may leave steps empty", "give every earlier stage steps")
        if st.steps is not None and st.steps < 1:
            fail(f"{name}.steps", st.steps, "must be an integer >= 1", "set the stage's length in optimizer steps")
    if s.stages:
        fixed = sum(st.steps for st in s.stages[:-1])
        if fixed >= s.steps:
            fail(
                "schedule.stages",
                [st.steps for st in s.stages],
                f"the stages before the last take {fixed} steps, "
                f"leaving none of schedule.steps={s.steps} for the last stage",
                "raise schedule.steps or shorten stages",
            )
    if cfg.model.attn_implementation not in ("auto", *ATTN_IMPLEMENTATIONS):  # auto: flex on CUDA, else eager
        fail(
            "model.attn_implementation",
            cfg.model.attn_implementation,
            f"must be auto, {', '.join(ATTN_IMPLEMENTATIONS[:-1])} or {ATTN_IMPLEMENTATIONS[-1]}",
            "pick one of the three",
        )
    if cfg.checkpoint.every < 0:
        fail("checkpoint.every", cfg.checkpoint.every, "must be >= 0", "use 0 to save only at the end")
    if cfg.log.every < 1:
        fail("log.every", cfg.log.every, "must be >= 1", "use 1 to log every step")
    if cfg.log.eval_every < 0 or (cfg.log.eval_every and (not cfg.log.eval_data or cfg.log.eval_every % cfg.log.every)):
        fail(
            "log.eval_every",
            cfg.log.eval_every,
            "must be >= 0; > 0 needs log.eval_data and a multiple of "
            f"log.every={cfg.log.every} (it is logged with the other metrics)",
            "set log.eval_data to a held-out packed shard folder and eval_every to a multiple of log.every, "
            "or log.eval_every=0",
        )
    if cfg.log.check_finite_every < 1:
        fail("log.check_finite_every", cfg.log.check_finite_every, "must be >= 1", "use 1 to check every step")
    if cfg.data.seq_len is not None and cfg.data.seq_len < 2:
        fail(
            "data.seq_len (--seq-len)",
            cfg.data.seq_len,
            "must be an integer >= 2 (tokens per training sequence)",
            "use e.g. 128, or leave it out to use the shards' seq_len",
        )
    if cfg.data.micro_batch is not None and cfg.data.micro_batch < 1:
        fail("data.micro_batch (--micro-batch)", cfg.data.micro_batch, "must be an integer >= 1", "use e.g. 2")
    if cfg.precision.dtype not in (None, "bf16", "fp16", "fp32"):
        fail("precision.dtype", cfg.precision.dtype, "must be bf16, fp16, fp32 or empty", "pick one")
    validate_align(cfg.align, fail)


# ----------------------------------------------------------------------------- attention kernels and compiled blocks


def attn_implementation(cfg: TrainConfig, device_type: str) -> str:
    """model.attn_implementation with "auto" resolved: FlexAttention's fused kernels on CUDA, else eager."""
    impl = cfg.model.attn_implementation
    if impl == "auto":
        return "flex_attention" if device_type == "cuda" else "eager"
    return impl


# The longest training sequence compiled blocks take on the GPU's FlexAttention path, the longest they have trained
# at on a GPU (350M at 8k under DeepSpeed, benchmarks/results/train_throughput.md). Past 2,048 tokens the blocks run
# L2's FlexAttention apart from their graphs (hierarchical_attention.FLEX_IN_BLOCK_GRAPH_MAX_LEN): inside them, R1
# 350M at 8k faults with an illegal memory access in its backward kernel. A kernel that faults may first write to
# memory it does not own, so lengths and ways of running L2 apart (hierarchical_attention.L2_APART) that no GPU run
# has trained compiled are refused. docs/training.md, "Compiled blocks".
COMPILED_FLEX_MAX_SEQ_LEN = 8192
L2_APART_TRAINED = ("break",)


def check_compiled_length(cfg: TrainConfig, seq_len: int, device_type: str, source: str = "data.seq_len") -> None:
    """Refuse model.compile for training sequences longer than COMPILED_FLEX_MAX_SEQ_LEN on the GPU's FlexAttention
    path. `source` says where seq_len came from (the setting, or the shards' meta.json)."""
    if not cfg.model.compile or device_type != "cuda" or attn_implementation(cfg, device_type) != "flex_attention":
        return
    if seq_len > COMPILED_FLEX_MAX_SEQ_LEN:
        raise ConfigError(
            f"model.compile=true with sequences of {seq_len} tokens ({source}): on CUDA with attn_implementation="
            f"flex_attention, compiled decoder blocks are refused past {COMPILED_FLEX_MAX_SEQ_LEN} tokens, the longest "
            "they have trained at on a GPU (with L2 inside the block graphs, 350M at 8k faults with an illegal memory "
            "access in FlexAttention's backward). Fix: set model.compile to false (drop --compile): the eager path "
            "runs the same fused attention kernels at any length; or set data.seq_len (--seq-len) to "
            f"{COMPILED_FLEX_MAX_SEQ_LEN} or less."
        )
    from .model import hierarchical_attention as ha

    if seq_len > ha.FLEX_IN_BLOCK_GRAPH_MAX_LEN and ha.L2_APART not in L2_APART_TRAINED:
        raise ConfigError(
            f"model.compile=true with sequences of {seq_len} tokens ({source}) and R1_L2_APART={ha.L2_APART}: past "
            f"{ha.FLEX_IN_BLOCK_GRAPH_MAX_LEN} tokens compiled blocks run L2 apart from their graphs, and only "
            f"{', '.join(L2_APART_TRAINED)} has trained that way on a GPU. Fix: unset R1_L2_APART, or set data.seq_len "
            f"(--seq-len) to {ha.FLEX_IN_BLOCK_GRAPH_MAX_LEN} or less."
        )


# ----------------------------------------------------------------------------- the start-up check


@dataclass(frozen=True)
class BatchPlan:
    """Resolved batch arithmetic: global = micro * grad_accum * data."""

    micro_batch: int
    grad_accum: int
    global_batch: int
    data_parallel: int


def _auto(value):
    return None if value == "auto" else value


def resolve_batch(
    *,
    world_size: int,
    pipe: int,
    tensor: int,
    data: int,
    ds_config: dict,
    micro_batch: int | None = None,
    global_batch: int | None = None,
    grad_accum: int | None = None,
    stage_batches: tuple[int, ...] = (),
) -> tuple[ParallelDims, BatchPlan]:
    """The one start-up check of layout and batch sizes; errors show the numbers and the fix.

    `micro_batch`, `global_batch`, `grad_accum` come from the command line or training config (they
    win); the DeepSpeed JSON's train_micro_batch_size_per_gpu / train_batch_size /
    gradient_accumulation_steps fill in, in that order, until two of the three are known, and the
    third is derived. When all three are given they must agree. `stage_batches` are the global
    batches of progressive stages 2, 3, ...: each must also split into whole micro-batches per rank."""
    try:
        dims = ParallelDims.build(world_size, pipe=pipe, tensor=tensor, data=data)
    except LayoutError as err:
        raise BatchSizeError(str(err)) from None
    dp = dims.data
    mine = {"micro": micro_batch, "global": global_batch, "gas": grad_accum}
    ds = {
        "micro": _auto(ds_config.get("train_micro_batch_size_per_gpu")),
        "global": _auto(ds_config.get("train_batch_size")),
        "gas": _auto(ds_config.get("gradient_accumulation_steps")),
    }
    chosen = {k: v for k, v in mine.items() if v is not None}
    user_set = bool(chosen)
    for k in ("micro", "global", "gas"):
        if k not in chosen and ds[k] is not None and (len(chosen) < 2 or not user_set):
            chosen[k] = ds[k]
    for k, v in chosen.items():
        if not isinstance(v, int) or v < 1:
            raise BatchSizeError(f"batch setting {_NAMES[k]}={v!r} must be an integer >= 1.")
    if len(chosen) < 2:  # DeepSpeed's defaults: no accumulation, then one sequence per micro-batch
        chosen.setdefault("gas", 1)
        if len(chosen) < 2:
            chosen.setdefault("micro", 1)
    micro, gbs, gas = chosen.get("micro"), chosen.get("global"), chosen.get("gas")
    if micro is None:
        if gbs % (gas * dp):
            raise BatchSizeError(
                _mismatch(
                    gbs,
                    None,
                    gas,
                    dims,
                    f"train_batch_size is not divisible by gradient_accumulation_steps {gas} x data_parallel {dp}",
                )
            )
        micro = gbs // (gas * dp)
    elif gas is None:
        if gbs % (micro * dp):
            raise BatchSizeError(
                _mismatch(
                    gbs,
                    micro,
                    None,
                    dims,
                    f"train_batch_size is not divisible by micro_batch {micro} x data_parallel {dp} = {micro * dp}",
                )
            )
        gas = gbs // (micro * dp)
    elif gbs is None:
        gbs = micro * gas * dp
    if gbs != micro * gas * dp:
        raise BatchSizeError(
            _mismatch(
                gbs,
                micro,
                gas,
                dims,
                f"micro_batch {micro} x grad_accum {gas} x data_parallel {dp} = {micro * gas * dp}, not {gbs}",
            )
        )
    for i, b in enumerate(stage_batches):
        if b % (micro * dp):
            raise BatchSizeError(
                f"progressive stage {i + 2} has global_batch={b}, which is not a multiple of micro_batch {micro} x "
                f"data_parallel {dp} = {micro * dp} (layout {dims.describe()}). Fix: use a global batch that is a "
                f"multiple of {micro * dp}, or change data.micro_batch."
            )
    return dims, BatchPlan(micro_batch=micro, grad_accum=gas, global_batch=gbs, data_parallel=dp)


_NAMES = {
    "micro": "train_micro_batch_size_per_gpu (data.micro_batch)",
    "global": "train_batch_size (schedule.global_batch)",
    "gas": "gradient_accumulation_steps (schedule.grad_accum)",
}


def _mismatch(gbs, micro, gas, dims: ParallelDims, rule: str) -> str:
    dp = dims.data
    fixes = []
    if micro and gas:
        fixes.append(f"train_batch_size={micro * gas * dp}")
    if micro and gbs % (micro * dp) == 0:
        fixes.append(f"gradient_accumulation_steps={gbs // (micro * dp)}")
    if gas and gbs % (gas * dp) == 0:
        fixes.append(f"train_micro_batch_size_per_gpu={gbs // (gas * dp)}")
    fix = " or ".join(fixes) if fixes else f"a train_batch_size that is a multiple of data_parallel {dp}"
    return (
        f"batch sizes disagree: train_batch_size={gbs}, train_micro_batch_size_per_gpu={micro}, "
        f"gradient_accumulation_steps={gas}, layout {dims.describe()} (data_parallel={dp}): {rule}. "
        f"The rule is train_batch_size == micro_batch x grad_accum x data_parallel. Fix: set {fix} "
        "(or leave one of the three out and it is derived)."
    )
