"""Export of a DeepSpeed checkpoint to a Hugging Face folder: any layout (pipe x tensor x data) gives one
folder. Tensor-parallel shards are merged with the TP plan and pipeline layer files are renamed to HF keys
(r1_ds.parallel.state_dict_mapping); every file is read weights-only unless the user trusts the checkpoint.
The folder is built under a temp name and renamed into place (`export_folder`)."""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager

import torch

from data_prep.atomic import TMP_PREFIX, fsync_dir

from .checkpoint_tags import (
    ASIDE_PREFIX,
    TRUST_FIX,
    CheckpointError,
    fallback_hint,
    read_latest,
    verify_tag,
)
from .metrics import log0
from .model import R1Config, R1ForCausalLM
from .model_card import prepare_release, write_model_card
from .parallel.deepspeed_patches import weights_only_loads
from .parallel.state_dict_mapping import TIED_KEY, merge_tensor_parallel_state_dicts, pipe_layer_prefixes
from .parallel.topology import TensorParallelError
from .safe_load import UnsafeFileError

log = logging.getLogger("r1_ds.checkpoint")


def resolve_tag_dir(ckpt: str, tag: str | None = None) -> str:
    """The tag folder of a checkpoint given as its root (with `latest`) or as the tag folder itself."""
    ckpt = os.path.abspath(ckpt)
    if tag:
        path = os.path.join(ckpt, tag)
    elif glob.glob(os.path.join(ckpt, "mp_rank_*_model_states.pt")):
        path = ckpt
    else:
        latest = read_latest(ckpt)
        if latest is None:
            raise CheckpointError(
                f"{ckpt} is not a DeepSpeed checkpoint: no `latest` file and no "
                "mp_rank_*_model_states.pt. Fix: pass the checkpoint folder of a run "
                "(<output_dir>/checkpoints) or one of its global_step* folders."
            )
        path = os.path.join(ckpt, latest)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint tag folder {path} does not exist")
    return path


def _load_pt(path: str) -> dict:
    """One checkpoint file, read inside `weights_only_loads` (weights-only unless the user trusts the
    checkpoint); a file that does not load is named, with the previous complete tag."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # the guard makes it weights-only
    except UnsafeFileError as err:
        raise CheckpointError(f"{err}. Nothing of it was loaded. Fix: {TRUST_FIX}.") from None
    except Exception as err:  # noqa: BLE001 - zip, pickle and I/O errors all mean the same: unreadable
        reason = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"{path} does not load ({type(err).__name__}: {reason}): truncated or corrupt."
            f"{fallback_hint(os.path.dirname(path))}"
        ) from None


def _model_config(engine_state: dict, where: str):
    if "r1_model_config" not in engine_state:
        raise CheckpointError(
            f"{where} has no r1_model_config: it was not written by `r1-ds train`. Fix: export "
            "checkpoints of r1-ds runs only."
        )
    return R1Config(
        **{
            k: v
            for k, v in engine_state["r1_model_config"].items()
            if k not in ("architectures", "model_type", "transformers_version", "auto_map")
        }
    )


def merge_tensor_ranks(per_rank: dict[int, dict], where: str) -> dict:
    """One full HF state dict from {tensor rank: that rank's HF state dict} (R1_TP_PLAN's shards)."""
    ranks = sorted(per_rank)
    if ranks != list(range(len(ranks))):
        raise CheckpointError(
            f"{where}: tensor-parallel shards {ranks} found, expected 0..{len(ranks) - 1}. Fix: "
            "export a complete checkpoint folder (one file per tensor rank)."
        )
    if len(ranks) == 1:
        return per_rank[0]
    try:
        return merge_tensor_parallel_state_dicts([per_rank[r] for r in ranks])
    except TensorParallelError as err:
        raise CheckpointError(f"{where}: {err}") from None


def hf_state_dict(tag_dir: str, *, trusted: bool = False) -> tuple[dict, dict]:
    """`_hf_state_dict` with every file read weights-only (`trusted`: unpickled as it is)."""
    with weights_only_loads(trusted):
        return _hf_state_dict(tag_dir)


def _hf_state_dict(tag_dir: str) -> tuple[dict, dict]:
    """(HF state dict in the training dtype, engine client state) from a tag folder: non-pipeline
    (mp_rank_XX_model_states.pt hold tensor rank XX's module), pipeline (layer_LL-model_XX-model_states.pt:
    pipe layer LL, tensor rank XX), or a ds_to_universal output (fp32 masters, tensor shards merged).
    Tensor-parallel shards are merged with R1_TP_PLAN."""
    states = sorted(glob.glob(os.path.join(tag_dir, "mp_rank_*_model_states.pt")))
    if not states:
        raise CheckpointError(f"{tag_dir} holds no mp_rank_*_model_states.pt")
    engine_state = _load_pt(states[0])
    if os.path.isdir(os.path.join(tag_dir, "zero")):  # a ds_to_universal output folder: fp32 master weights
        return _universal_state_dict(tag_dir, engine_state), engine_state
    config = _model_config(engine_state, states[0])
    if engine_state.get("module") is not None:  # not a pipeline: mp_rank_XX holds tensor rank XX's module
        if engine_state.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0) == 3:
            if len(states) > 1:
                raise CheckpointError(
                    f"{tag_dir}: a ZeRO-3 checkpoint with {len(states)} tensor ranks; r1-ds does "
                    "not train tensor parallel with ZeRO-3, so this folder is not one of its runs."
                )
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            module = get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(tag_dir), os.path.basename(tag_dir))
            return dict(module), engine_state
        per_rank = {0: dict(engine_state["module"])}
        for path in states[1:]:
            rank = int(re.search(r"mp_rank_(\d+)_model_states\.pt$", path).group(1))
            per_rank[rank] = dict(_load_pt(path)["module"])
        return merge_tensor_ranks(per_rank, tag_dir), engine_state
    prefixes = pipe_layer_prefixes(config)
    per_rank: dict[int, dict] = {}
    for path in sorted(glob.glob(os.path.join(tag_dir, "layer_*-model_states.pt"))):
        m = re.match(r"layer_(\d+)(?:-model_(\d+))?-model_states\.pt$", os.path.basename(path))
        if not m:
            continue
        layer, shard = int(m.group(1)), int(m.group(2) or 0)
        if layer >= len(prefixes) or prefixes[layer] is None:
            raise CheckpointError(f"{path}: pipeline layer {layer} has no HF name for this model config")
        part = per_rank.setdefault(shard, {})
        for key, value in _load_pt(path).items():
            part[prefixes[layer] + key] = value
    if not per_rank:
        raise CheckpointError(
            f"{tag_dir} has neither a module in {os.path.basename(states[0])} nor layer_*-model_states.pt files"
        )
    return merge_tensor_ranks(per_rank, tag_dir), engine_state


def _universal_state_dict(tag_dir: str, engine_state: dict) -> dict:
    """HF state dict from `ds_to_universal` output: zero/<param name>/fp32.pt per parameter (tensor
    shards already merged). Pipeline names ("3.self_attn.q_proj.weight", "tied_modules.embed.weight") map
    through the layer prefixes. A tied `lm_head.weight` is skipped: ds_to_universal writes it from the
    module state of tensor rank 0 (it has no optimizer state of its own), i.e. as a vocabulary shard."""
    config = _model_config(engine_state, f"{tag_dir} (universal checkpoint)")
    prefixes = pipe_layer_prefixes(config)
    sd = {}
    for name in sorted(os.listdir(os.path.join(tag_dir, "zero"))):
        path = os.path.join(tag_dir, "zero", name, "fp32.pt")
        if not os.path.isfile(path) or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        value = _load_pt(path)["param"]
        if name.startswith(f"tied_modules.{TIED_KEY}."):
            key = prefixes[0] + name[len(f"tied_modules.{TIED_KEY}.") :]
        elif name.split(".", 1)[0].isdigit():
            layer, rest = name.split(".", 1)
            key = prefixes[int(layer)] + rest
        else:
            key = name
        sd[key] = value
    if not sd:
        raise CheckpointError(f"{tag_dir}/zero holds no */fp32.pt files")
    return sd


def export_hf(ckpt: str, out: str, *, tag: str | None = None, dtype: str | None = None, trusted: bool = False) -> str:
    """Write a Hugging Face folder (config.json, model.safetensors, model code, tokenizer when the run
    had one) that `AutoModelForCausalLM.from_pretrained` loads; returns `out`. Any layout (pipe x tensor
    x data) gives one folder: tensor shards are merged, data replicas are one copy. Files are read
    weights-only (`trusted`: as they are). The folder is built under a temp name and renamed into place,
    so a killed export leaves no partial folder and an old export at `out` is replaced whole."""
    tag_dir = resolve_tag_dir(ckpt, tag)
    verify_tag(tag_dir, trusted=trusted)
    sd, engine_state = hf_state_dict(tag_dir, trusted=trusted)
    check_finite(sd, tag_dir)
    out = os.path.abspath(out)
    check_output_folder(out, "export folder")
    _check_replaceable(out)
    with export_folder(out) as tmp:
        _write_hf_folder(tmp, sd, engine_state, tag_dir=tag_dir, dtype=dtype)
    log0("exported %s (step %s) to %s", tag_dir, engine_state.get("global_steps"), out)
    return out


def check_output_folder(path: str, what: str) -> None:
    """A folder to write to, checked before any work: refused, with the fix, when it is a file or when its
    nearest existing folder cannot be written (a probe file is created and removed: permission bits do not
    tell for root or for a read-only mount)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"{what} {path} is a file. Fix: pass a folder path (or remove the file).")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CheckpointError(f"{what} {path}: {parent} is a file, not a folder. Fix: choose another path.")
    try:
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX + "write-probe.", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise CheckpointError(
            f"{what} {path}: {parent} is not writable ({err.strerror}). Fix: choose a writable "
            "folder, or change its permissions / mount."
        ) from None


def check_finite(sd: dict, tag_dir: str) -> None:
    """Refuse to export the weights of a run that had diverged, naming the tensors and an earlier checkpoint."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{tag_dir}: weights hold NaN or Inf ({bad[:4]}{' ...' if len(bad) > 4 else ''}): the "
            f"run had diverged when it saved this checkpoint.{fallback_hint(tag_dir)}"
        )


def _check_replaceable(out: str) -> None:
    """An existing `out` is replaced whole by the export: only an empty folder or a model folder (one with
    config.json) may be, never a folder of other files."""
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, "config.json")):
        raise CheckpointError(
            f"export folder {out} exists and is not a model folder (no config.json; it holds "
            f"{sorted(os.listdir(out))[:5]}): the export would replace it whole. Fix: pass a new or "
            "empty folder, or an earlier export to replace."
        )


@contextmanager
def export_folder(out: str):
    """A temp folder beside `out`; on success the old `out` (if any) is moved aside, the temp folder renamed
    to `out`, and the old one deleted. On any failure the temp folder is removed and `out` is untouched."""
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + os.path.basename(out) + ".", dir=parent)
    try:
        yield tmp
        fsync_dir(tmp)
        old = None
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=ASIDE_PREFIX + os.path.basename(out) + ".", dir=parent)
            os.rmdir(old)
            os.rename(out, old)
        os.rename(tmp, out)
        fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_hf_folder(out: str, sd: dict, engine_state: dict, *, tag_dir: str, dtype: str | None) -> None:
    config = _model_config(engine_state, tag_dir)
    train_dtype = next(iter(sd.values())).dtype
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: train_dtype}[dtype]
    model = R1ForCausalLM(config)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    wrong = [
        f"{k} {tuple(v.shape)} (model: {tuple(shapes[k])})"
        for k, v in sd.items()
        if k in shapes and v.shape != shapes[k]
    ]
    if wrong:
        raise CheckpointError(
            f"{tag_dir}: weights do not have the model's shapes: {wrong[:4]}. Tensor-parallel "
            "shards that were not merged look like this. Fix: export the original checkpoint "
            "folder (all mp_rank_*/layer_* files), not a partial copy."
        )
    missing, unexpected = model.load_state_dict(sd, strict=False)
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise CheckpointError(
            f"{tag_dir}: weights do not match the R1 config: missing {sorted(set(missing) - allowed_missing)}"
            f", unexpected {sorted(unexpected)}"
        )
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.set_attn_implementation(
        "eager"
    )  # the reference; `from_pretrained(..., attn_implementation=...)` may change it
    tok, tokenizer = engine_state.get("r1_tokenizer_dir"), None
    if tok and os.path.isdir(tok):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok, padding_side="left")  # what generate() expects
    elif tok:
        log.warning("the run's tokenizer %s is gone; the export has no tokenizer", tok)
    prepare_release(model, tokenizer)  # special-token ids in both configs, plain cross entropy
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
        log0("copied the tokenizer from %s", tok)
    write_model_card(
        out,
        model.config,
        step=engine_state.get("global_steps"),
        train_config=engine_state.get("r1_train_config") or {},
        layout=engine_state.get("r1_layout"),
        has_tokenizer=tokenizer is not None,
    )
