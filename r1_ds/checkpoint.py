"""DeepSpeed checkpoints: atomic save, resume, and export to a Hugging Face folder.

Layout of a checkpoint folder (DeepSpeed's, plus an atomic `latest`):

    CKPT/latest                      the tag of the newest complete checkpoint (replaced atomically)
    CKPT/global_step200/             one tag; pipeline runs hold layer_XX-model_YY-model_states.pt
                                     (weights, keys relative to the layer) and mp_rank_YY_model_states.pt
                                     (engine state, `module` None); other runs hold the whole module in
                                     mp_rank_00_model_states.pt. Optimizer shards: *_optim_states.pt.

Atomic save: every rank writes into `CKPT/.tmp-<tag>`; when all are done rank 0 renames it to
`CKPT/<tag>` and then replaces `latest` (write a temp file, fsync, os.replace). A crash at any
point leaves the previous tag complete and named by `latest`; a leftover `.tmp-*` is removed by
the next save. Needs one file system shared by all ranks (as DeepSpeed itself does).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil

import torch

from .metrics import log0

log = logging.getLogger("r1_ds.checkpoint")

TMP_PREFIX = ".tmp-"
UNIVERSAL_INFO = {"universal_checkpoint_version": 0.2}  # what ds_to_universal requires in client_state


class CheckpointError(ValueError):
    """A checkpoint is missing or unreadable; the message names the path and the fix."""


def tag_for(step: int) -> str:
    return f"global_step{step}"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_latest(save_dir: str, tag: str) -> None:
    """Point `latest` at `tag`, atomically (readers see the old or the new tag, never a partial file)."""
    tmp = os.path.join(save_dir, f"{TMP_PREFIX}latest")
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(save_dir, "latest"))
    _fsync_dir(save_dir)


def read_latest(save_dir: str) -> str | None:
    path = os.path.join(save_dir, "latest")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        tag = f.read().strip()
    return tag or None


def list_tags(save_dir: str) -> list[str]:
    """Complete checkpoint tags in `save_dir`, oldest first (by step)."""
    tags = [d for d in os.listdir(save_dir) if re.fullmatch(r"global_step\d+", d)
            and os.path.isdir(os.path.join(save_dir, d))] if os.path.isdir(save_dir) else []
    return sorted(tags, key=lambda t: int(t[len("global_step"):]))


def save(engine, save_dir: str, step: int, client_state: dict, *, keep: int = 0) -> str:
    """Save on every rank (collective); returns the final tag folder."""
    from deepspeed import comm as dist

    tag = tag_for(step)
    tmp_tag = TMP_PREFIX + tag
    rank0 = dist.get_rank() == 0
    if rank0:
        os.makedirs(save_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(save_dir, TMP_PREFIX + "*")):  # a crashed save's leftovers
            shutil.rmtree(stale, ignore_errors=True) if os.path.isdir(stale) else os.remove(stale)
    dist.barrier()
    engine.save_checkpoint(save_dir, tag=tmp_tag, client_state={**client_state, "universal_checkpoint_info":
                                                                  client_state.get("universal_checkpoint_info",
                                                                                   UNIVERSAL_INFO)},
                           save_latest=False)
    dist.barrier()  # every rank's files are in the temp folder
    final = os.path.join(save_dir, tag)
    if rank0:
        _fsync_dir(os.path.join(save_dir, tmp_tag))
        if os.path.isdir(final):  # saving the same step again (e.g. the end of a resumed, finished run)
            shutil.rmtree(final)
        os.rename(os.path.join(save_dir, tmp_tag), final)
        _fsync_dir(save_dir)
        write_latest(save_dir, tag)
        if keep > 0:
            for old in list_tags(save_dir)[:-keep]:
                shutil.rmtree(os.path.join(save_dir, old), ignore_errors=True)
        log0("saved checkpoint %s", final)
    dist.barrier()
    return final


def find_resume(save_dir: str, resume: str) -> tuple[str, str] | None:
    """(load_dir, tag) to resume from, or None to start fresh.

    resume "auto": `save_dir`'s latest, if any; "none": never; otherwise a checkpoint folder (with
    `latest`) or a tag folder inside one."""
    if resume in ("none", "", None):
        return None
    if resume == "auto":
        tag = read_latest(save_dir)
        if tag is None:
            return None
        if not os.path.isdir(os.path.join(save_dir, tag)):
            raise CheckpointError(f"{save_dir}/latest names {tag!r}, which does not exist. Fix: restore the folder, "
                                  f"or write an existing tag ({list_tags(save_dir)}) into latest.")
        return save_dir, tag
    path = os.path.abspath(resume)
    if os.path.isfile(os.path.join(path, "latest")):
        return path, read_latest(path)
    if os.path.isdir(path) and glob.glob(os.path.join(path, "mp_rank_*_model_states.pt")):
        return os.path.dirname(path), os.path.basename(path)
    raise CheckpointError(f"checkpoint.resume={resume!r} is neither a checkpoint folder (with a `latest` file) nor a "
                          "tag folder (with mp_rank_*_model_states.pt). Fix: pass one of those, \"auto\" or \"none\".")


def load(engine, load_dir: str, tag: str) -> dict:
    """Load weights, optimizer, scheduler and engine counters; return the client state."""
    path, client_state = engine.load_checkpoint(load_dir, tag=tag)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {os.path.join(load_dir, tag)}. Fix: check the folder is "
                              "complete, or start fresh with checkpoint.resume=none.")
    log0("resumed from %s at step %d", path, engine.global_steps)
    return client_state or {}


# ----------------------------------------------------------------------------- export to Hugging Face


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
            raise CheckpointError(f"{ckpt} is not a DeepSpeed checkpoint: no `latest` file and no "
                                  "mp_rank_*_model_states.pt. Fix: pass the checkpoint folder of a run "
                                  "(<output_dir>/checkpoints) or one of its global_step* folders.")
        path = os.path.join(ckpt, latest)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint tag folder {path} does not exist")
    return path


def _load_pt(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def hf_state_dict(tag_dir: str) -> tuple[dict, dict]:
    """(HF state dict in the training dtype, engine client state) from a tag folder, pipeline or not."""
    from .parallel.pipeline import pipe_layer_prefixes
    from .model import R1Config

    states = sorted(glob.glob(os.path.join(tag_dir, "mp_rank_*_model_states.pt")))
    if not states:
        raise CheckpointError(f"{tag_dir} holds no mp_rank_*_model_states.pt")
    engine_state = _load_pt(states[0])
    if os.path.isdir(os.path.join(tag_dir, "zero")):  # a ds_to_universal output folder: fp32 master weights
        return _universal_state_dict(tag_dir, engine_state), engine_state
    if "r1_model_config" not in engine_state:
        raise CheckpointError(f"{states[0]} has no r1_model_config: it was not written by `r1-ds train`. Fix: export "
                              "checkpoints of r1-ds runs only.")
    config = R1Config(**{k: v for k, v in engine_state["r1_model_config"].items()
                         if k not in ("architectures", "model_type", "transformers_version", "auto_map")})
    if engine_state.get("module") is not None:  # not a pipeline: the whole module, HF keys
        module = engine_state["module"]
        if engine_state.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0) == 3:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            module = get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(tag_dir), os.path.basename(tag_dir))
        return dict(module), engine_state
    prefixes = pipe_layer_prefixes(config)
    sd = {}
    for path in sorted(glob.glob(os.path.join(tag_dir, "layer_*-model_states.pt"))):
        m = re.match(r"layer_(\d+)(?:-model_(\d+))?-model_states\.pt$", os.path.basename(path))
        if not m:
            continue
        layer, shard = int(m.group(1)), int(m.group(2) or 0)
        if shard > 0:
            raise CheckpointError(f"{path}: tensor-parallel shard {shard}; merging tensor shards is not supported by "
                                  "this exporter yet. Fix: convert with ds_to_universal first, or export a tensor=1 run.")
        if layer >= len(prefixes) or prefixes[layer] is None:
            raise CheckpointError(f"{path}: pipeline layer {layer} has no HF name for this model config")
        for key, value in _load_pt(path).items():
            sd[prefixes[layer] + key] = value
    if not sd:
        raise CheckpointError(f"{tag_dir} has neither a module in {os.path.basename(states[0])} nor layer_*-"
                              "model_states.pt files")
    return sd, engine_state


def _universal_state_dict(tag_dir: str, engine_state: dict) -> dict:
    """HF state dict from `ds_to_universal` output: zero/<param name>/fp32.pt per parameter. Pipeline
    names ("3.self_attn.q_proj.weight", "tied_modules.embed.weight") map through the layer prefixes."""
    from .model import R1Config
    from .parallel.pipeline import TIED_KEY, pipe_layer_prefixes

    if "r1_model_config" not in engine_state:
        raise CheckpointError(f"{tag_dir}: no r1_model_config in the universal checkpoint's model states")
    config = R1Config(**{k: v for k, v in engine_state["r1_model_config"].items()
                         if k not in ("architectures", "model_type", "transformers_version", "auto_map")})
    prefixes = pipe_layer_prefixes(config)
    sd = {}
    for name in sorted(os.listdir(os.path.join(tag_dir, "zero"))):
        path = os.path.join(tag_dir, "zero", name, "fp32.pt")
        if not os.path.isfile(path):
            continue
        value = _load_pt(path)["param"]
        if name.startswith(f"tied_modules.{TIED_KEY}."):
            key = prefixes[0] + name[len(f"tied_modules.{TIED_KEY}."):]
        elif name.split(".", 1)[0].isdigit():
            layer, rest = name.split(".", 1)
            key = prefixes[int(layer)] + rest
        else:
            key = name
        sd[key] = value
    if not sd:
        raise CheckpointError(f"{tag_dir}/zero holds no */fp32.pt files")
    return sd


def export_hf(ckpt: str, out: str, *, tag: str | None = None, dtype: str | None = None) -> str:
    """Write a Hugging Face folder (config.json, model.safetensors, model code, tokenizer when the run
    had one) that `AutoModelForCausalLM.from_pretrained` loads; returns `out`."""
    from .model import R1Config, R1ForCausalLM

    tag_dir = resolve_tag_dir(ckpt, tag)
    sd, engine_state = hf_state_dict(tag_dir)
    cfg_dict = {k: v for k, v in engine_state["r1_model_config"].items()
                if k not in ("architectures", "model_type", "transformers_version", "auto_map")}
    config = R1Config(**cfg_dict)
    train_dtype = next(iter(sd.values())).dtype
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: train_dtype}[dtype]
    model = R1ForCausalLM(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise CheckpointError(f"{tag_dir}: weights do not match the R1 config: missing {sorted(set(missing) - allowed_missing)}"
                              f", unexpected {sorted(unexpected)}")
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.config._attn_implementation = "eager"  # the reference; `from_pretrained(..., attn_implementation=...)` may change it
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok = engine_state.get("r1_tokenizer_dir")
    if tok and os.path.isdir(tok):
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tok).save_pretrained(out)
        log0("copied the tokenizer from %s", tok)
    elif tok:
        log.warning("the run's tokenizer %s is gone; the export has no tokenizer", tok)
    log0("exported %s (%s, step %s) to %s", tag_dir, str(torch_dtype).replace("torch.", ""),
         engine_state.get("global_steps"), out)
    return out
