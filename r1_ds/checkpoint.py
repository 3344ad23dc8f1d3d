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
the next save. Saving a step that already exists (the end of a resumed, finished run) first renames
the old folder aside (`.tmp-old-<tag>`) and deletes it only once the new one is in place; the next
save puts an aside folder back if a crash left its tag missing. `keep` prunes only tags older than
the one just saved, so resuming from an older tag never deletes the checkpoint `latest` names.
Needs one file system shared by all ranks (as DeepSpeed itself does).

Reading: every .pt file of a tag is opened (its pickle, not its tensors) before anything loads it
(`verify_tag`: a damaged file is named with the previous complete tag), and every load, DeepSpeed's
included, is weights-only with an allowlist (r1_ds.safe_load) unless the user trusts the checkpoint.
`resume: auto` falls back to the newest complete tag when `latest` is unusable. A save that fails to
write (a full disk) removes its temp folder. Export builds the HF folder under a temp name and renames
it into place (`export_folder`).

Resume with another layout (pipe x tensor x data): `check_resume_layout` decides, before DeepSpeed
loads anything, whether the saved files fit this run, and otherwise says how to convert them
(`ds_to_universal`) or export them. Export merges tensor-parallel shards into one HF state dict.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from data_prep.atomic import TMP_PREFIX, atomic_write_text, fsync_dir  # the one implementation of atomic writes

from .metrics import log0
from .parallel.deepspeed_patches import weights_only_loads
from .safe_load import UnsafeFileError, unsafe_globals

log = logging.getLogger("r1_ds.checkpoint")

ASIDE_PREFIX = TMP_PREFIX + "old-"  # an existing tag folder being replaced by a new save of the same step
UNIVERSAL_INFO = {"universal_checkpoint_version": 0.2}  # what ds_to_universal requires in client_state


class CheckpointError(ValueError):
    """A checkpoint is missing or unreadable; the message names the path and the fix."""


def tag_for(step: int) -> str:
    return f"global_step{step}"


def step_of(tag: str) -> int:
    return int(tag[len("global_step"):])


def write_latest(save_dir: str, tag: str) -> None:
    """Point `latest` at `tag`, atomically (readers see the old or the new tag, never a partial file)."""
    atomic_write_text(os.path.join(save_dir, "latest"), tag)


def read_latest(save_dir: str) -> str | None:
    """The tag `latest` names; None when it is missing, empty or unreadable (see `latest_problem`)."""
    path = os.path.join(save_dir, "latest")
    try:
        with open(path, encoding="utf-8") as f:
            tag = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return tag or None


def latest_problem(save_dir: str) -> str:
    """Why `read_latest` gave None, in words."""
    path = os.path.join(save_dir, "latest")
    if not os.path.lexists(path):
        return "is missing"
    try:
        with open(path, encoding="utf-8") as f:
            return "is empty" if not f.read().strip() else "is readable"
    except (OSError, UnicodeDecodeError) as err:
        return f"is unreadable ({err})"


def is_complete(tag_dir: str) -> bool:
    """A tag folder that a finished save renamed into place holds the engine state of tensor rank 0."""
    return os.path.isfile(os.path.join(tag_dir, "mp_rank_00_model_states.pt"))


def complete_tags(save_dir: str) -> list[str]:
    """`list_tags` restricted to complete folders, oldest first."""
    return [t for t in list_tags(save_dir) if is_complete(os.path.join(save_dir, t))]


def last_good(save_dir: str) -> str | None:
    """The complete tag folder `latest` names (else the newest complete one), or None."""
    tag = read_latest(save_dir)
    if tag is not None and is_complete(os.path.join(save_dir, tag)):
        return os.path.join(save_dir, tag)
    complete = complete_tags(save_dir)
    return os.path.join(save_dir, complete[-1]) if complete else None


def previous_complete(tag_dir: str) -> str | None:
    """The newest complete tag folder older than `tag_dir` in the same checkpoint folder, if any."""
    save_dir, tag = os.path.split(os.path.abspath(tag_dir))
    if not re.fullmatch(r"global_step\d+", tag):
        return None
    older = [t for t in complete_tags(save_dir) if step_of(t) < step_of(tag)]
    return os.path.join(save_dir, older[-1]) if older else None


def list_tags(save_dir: str) -> list[str]:
    """Complete checkpoint tags in `save_dir`, oldest first (by step)."""
    tags = [d for d in os.listdir(save_dir) if re.fullmatch(r"global_step\d+", d)
            and os.path.isdir(os.path.join(save_dir, d))] if os.path.isdir(save_dir) else []
    return sorted(tags, key=step_of)


def _clean_leftovers(save_dir: str) -> None:
    """Remove a crashed save's `.tmp-*` leftovers; an aside folder whose tag is missing (a crash while
    re-saving that step) is renamed back instead, so that `latest` names a complete folder again."""
    for stale in glob.glob(os.path.join(save_dir, TMP_PREFIX + "*")):
        name = os.path.basename(stale)
        if name.startswith(ASIDE_PREFIX) and os.path.isdir(stale):
            final = os.path.join(save_dir, name[len(ASIDE_PREFIX):])
            if not os.path.exists(final):
                os.rename(stale, final)
                log0("restored %s from an interrupted re-save", final, level=logging.WARNING)
                continue
        if os.path.isdir(stale):
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.remove(stale)
    fsync_dir(save_dir)


def _prune(save_dir: str, step: int, keep: int) -> None:
    """Keep the `keep` newest tags up to `step` (the one just saved among them); tags newer than `step`
    (an abandoned future after resuming from an older tag) are left alone, the one just saved is never
    removed."""
    older = [t for t in list_tags(save_dir) if step_of(t) < step]
    for old in older[:max(0, len(older) - (keep - 1))]:
        shutil.rmtree(os.path.join(save_dir, old), ignore_errors=True)


def save(engine, save_dir: str, step: int, client_state: dict, *, keep: int = 0) -> str:
    """Save on every rank (collective); returns the final tag folder."""
    from deepspeed import comm as dist

    tag = tag_for(step)
    tmp_tag = TMP_PREFIX + tag
    rank0 = dist.get_rank() == 0
    if rank0:
        os.makedirs(save_dir, exist_ok=True)
        _clean_leftovers(save_dir)
    dist.barrier()
    try:
        engine.save_checkpoint(save_dir, tag=tmp_tag, client_state={**client_state, "universal_checkpoint_info":
                                                                      client_state.get("universal_checkpoint_info",
                                                                                       UNIVERSAL_INFO)},
                               save_latest=False)
    except (OSError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "write" not in str(err):  # torch.save's "file write failed"
            raise
        shutil.rmtree(os.path.join(save_dir, tmp_tag), ignore_errors=True)  # frees the space it took
        prev = last_good(save_dir)
        raise CheckpointError(f"saving the checkpoint of step {step} to {save_dir} failed ({err}); the partial "
                              f"folder was removed and {prev or 'no earlier checkpoint'} stays the one to resume from. "
                              "Fix: free disk space (or choose a checkpoint.dir with room), then resume.") from None
    dist.barrier()  # every rank's files are in the temp folder
    final = os.path.join(save_dir, tag)
    if rank0:
        fsync_dir(os.path.join(save_dir, tmp_tag))
        aside = None
        if os.path.isdir(final):  # saving the same step again (e.g. the end of a resumed, finished run)
            aside = os.path.join(save_dir, ASIDE_PREFIX + tag)  # kept until the new folder is in place
            os.rename(final, aside)
        os.rename(os.path.join(save_dir, tmp_tag), final)
        fsync_dir(save_dir)
        write_latest(save_dir, tag)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)  # a leftover is removed by the next save
        if keep > 0:
            _prune(save_dir, step, keep)
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
        return _auto_resume(save_dir)
    path = os.path.abspath(resume)
    if os.path.isfile(os.path.join(path, "latest")):
        tag = read_latest(path)
        if tag is None:
            raise CheckpointError(f"checkpoint.resume={resume!r}: {path}/latest is empty. Fix: write an existing tag "
                                  f"({list_tags(path)}) into latest, or pass a tag folder.")
        return path, _existing_tag(path, tag)
    if os.path.isdir(path) and glob.glob(os.path.join(path, "mp_rank_*_model_states.pt")):
        return os.path.dirname(path), os.path.basename(path)
    raise CheckpointError(f"checkpoint.resume={resume!r} is neither a checkpoint folder (with a `latest` file) nor a "
                          "tag folder (with mp_rank_*_model_states.pt). Fix: pass one of those, \"auto\" or \"none\".")


def _auto_resume(save_dir: str) -> tuple[str, str] | None:
    """`latest` when it names a complete tag; otherwise the newest complete tag, with a warning (a missing,
    empty or unreadable `latest` never restarts a run from step 0 over its own checkpoints); None only
    when the folder holds no checkpoint at all."""
    tag = read_latest(save_dir)
    if tag is not None and is_complete(os.path.join(save_dir, tag)):
        return save_dir, tag
    if tag is not None and os.path.isdir(os.path.join(save_dir, ASIDE_PREFIX + tag)):
        _existing_tag(save_dir, tag)  # raises: an interrupted re-save, whose folder is to be renamed back
    complete = complete_tags(save_dir)
    problem = f"names {tag!r}, which is not a complete checkpoint" if tag is not None else latest_problem(save_dir)
    if complete:
        log0("checkpoint folder %s: `latest` %s; resuming from the newest complete checkpoint %s", save_dir,
             problem, complete[-1], level=logging.WARNING)
        return save_dir, complete[-1]
    if tag is None and not list_tags(save_dir):
        return None  # a new run
    raise CheckpointError(f"{save_dir}/latest {problem}, and no global_step* folder there is complete (holds "
                          f"mp_rank_00_model_states.pt): {list_tags(save_dir)}. Fix: restore the checkpoint, or move "
                          "the folder away / set checkpoint.resume=none to start a new run (it would overwrite "
                          "these folders).")


def _existing_tag(save_dir: str, tag: str) -> str:
    """`tag` (read from `save_dir`/latest), or a CheckpointError when its folder is missing."""
    if os.path.isdir(os.path.join(save_dir, tag)):
        return tag
    aside = os.path.join(save_dir, ASIDE_PREFIX + tag)
    fix = (f"rename {aside} to {os.path.join(save_dir, tag)} (a re-save of that step was interrupted)"
           if os.path.isdir(aside) else
           f"restore the folder, or write an existing tag ({list_tags(save_dir)}) into latest")
    raise CheckpointError(f"{save_dir}/latest names {tag!r}, which does not exist. Fix: {fix}.")


TRUST_FIX = ("if you trust where this checkpoint comes from, pass --trust-checkpoint (checkpoint.trust=true), "
             "which unpickles it as it is")


def _fallback(tag_dir: str) -> str:
    """What to do instead of loading `tag_dir`: the previous complete tag, if there is one."""
    prev = previous_complete(tag_dir)
    if prev is None:
        return " No earlier complete checkpoint exists in that folder. Fix: restore the file from a copy, or start a " \
               "new run (checkpoint.resume=none, another output folder)."
    return (f" The previous complete checkpoint is {prev}. Fix: resume from it (checkpoint.resume={prev}) or export "
            f"it (r1-ds export {prev} OUT), or restore the file from a copy.")


def verify_tag(tag_dir: str, *, trusted: bool = False) -> None:
    """Open the pickle of every .pt file of a tag folder (not its tensors) before anything loads it: a
    truncated or garbage file, or one that names callables outside the allowlist, is refused here with its
    name and the previous complete tag, on every rank alike (they read the same shared folder)."""
    files = sorted(glob.glob(os.path.join(tag_dir, "*.pt")) + glob.glob(os.path.join(tag_dir, "zero", "*.pt"))
                   + glob.glob(os.path.join(tag_dir, "zero", "*", "*.pt")))
    if not files:
        raise CheckpointError(f"{tag_dir} holds no .pt files: it is not a complete checkpoint.{_fallback(tag_dir)}")
    for path in files:
        try:
            names = unsafe_globals(path)
        except Exception as err:  # noqa: BLE001 - zip, pickle and I/O errors all mean the same: unreadable
            reason = str(err).split(". ")[0].split("\n")[0]
            raise CheckpointError(f"{path} is not a readable checkpoint file ({type(err).__name__}: {reason}): "
                                  f"truncated or corrupt.{_fallback(tag_dir)}") from None
        if names and not trusted:
            raise CheckpointError(f"{UnsafeFileError(path, names)}. Nothing of it was loaded. Fix: {TRUST_FIX}.")


def load(engine, load_dir: str, tag: str, *, trusted: bool = False) -> dict:
    """Load weights, optimizer, scheduler and engine counters (DeepSpeed's reads weights-only, see
    r1_ds.safe_load); return the client state."""
    try:
        with weights_only_loads(trusted):
            path, client_state = engine.load_checkpoint(load_dir, tag=tag)
    except UnsafeFileError as err:
        raise CheckpointError(f"{err}. Nothing of it was loaded. Fix: {TRUST_FIX}.") from None
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {os.path.join(load_dir, tag)}. Fix: check the folder is "
                              "complete, or start fresh with checkpoint.resume=none.")
    log0("resumed from %s at step %d", path, engine.global_steps)
    return client_state or {}


# ----------------------------------------------------------------------------- resume with another layout


@dataclass(frozen=True)
class SavedCheckpoint:
    """What a checkpoint folder says about the run that wrote it (read before loading it)."""

    path: str  # the tag folder
    layout: tuple[int, int, int] | None  # (pipe, tensor, data) of the run that saved it; None: unknown
    universal: bool  # a ds_to_universal output (zero/<param>/fp32.pt): loads into any layout of its kind
    optimizer_shards: bool  # *_optim_states.pt files (ZeRO >= 1 or bf16): ds_to_universal can convert it
    model_config: dict | None = None  # r1_model_config of the run that saved it
    dtype: str | None = None  # its training dtype ("bf16", "fp16", "fp32"), from the saved DeepSpeed config


def _layout_str(layout) -> str:
    pipe, tensor, data = layout
    return f"pipe={pipe} x tensor={tensor} x data={data}"


def read_saved_checkpoint(load_dir: str, tag: str, *, trusted: bool = False) -> SavedCheckpoint:
    """The saved layout (client state `r1_layout`; older checkpoints: the saved training config and
    DeepSpeed's dp_world_size), model config and dtype from mp_rank_00_model_states.pt, memory-mapped so
    that a large non-pipeline module is not read; every file of the tag is checked first (`verify_tag`)."""
    from .precision import training_dtype

    path = os.path.join(load_dir, tag)
    verify_tag(path, trusted=trusted)
    first = os.path.join(path, "mp_rank_00_model_states.pt")
    layout = model_config = dtype = None
    if os.path.isfile(first):
        with weights_only_loads(trusted):  # weights-only with the allowlist unless trusted
            state = torch.load(first, map_location="cpu", mmap=True, weights_only=False)
        model_config = state.get("r1_model_config")
        if isinstance(state.get("ds_config"), dict):
            dtype = training_dtype(state["ds_config"])
        if isinstance(state.get("r1_layout"), dict):
            layout = tuple(int(state["r1_layout"][k]) for k in ("pipe", "tensor", "data"))
        elif isinstance(state.get("r1_train_config"), dict) and "dp_world_size" in state:
            par = state["r1_train_config"].get("parallel", {})
            layout = (int(par.get("pipe", 1)), int(par.get("tensor", 1)), int(state["dp_world_size"]))
    return SavedCheckpoint(path=path, layout=layout, universal=os.path.isdir(os.path.join(path, "zero")),
                           optimizer_shards=bool(glob.glob(os.path.join(path, "*optim_states.pt"))),
                           model_config=model_config, dtype=dtype)


def check_resume_layout(saved: SavedCheckpoint, *, pipe: int, tensor: int, data: int, zero_stage: int) -> None:
    """Refuse, with both layouts and the fix, a resume DeepSpeed cannot do correctly:

    - a universal checkpoint loads into any layout of its kind (pipeline or not: the parameter names
      differ) when this run uses ZeRO stage >= 1 (DeepSpeed restores it through the ZeRO optimizer);
    - a regular checkpoint loads into its own layout, or into another `data` size when it has no
      optimizer shards (fp32/fp16 without ZeRO keep the optimizer state per pipe x tensor rank);
    - anything else goes through `ds_to_universal` (checkpoints with optimizer shards) or export.
    """
    now = (pipe, tensor, data)
    if saved.layout is None:
        log0("resume: %s does not record its parallel layout; loading it as %s", saved.path, _layout_str(now),
             level=logging.WARNING)
        return
    was, here = _layout_str(saved.layout), _layout_str(now)
    export_fix = (f"export it (`r1-ds export {saved.path} <hf_dir>`) and start a new run with model.init_from=<hf_dir> "
                  "(weights only: the optimizer restarts)")
    if saved.universal:
        if (saved.layout[0] > 1) != (pipe > 1):
            kind = "pipeline" if saved.layout[0] > 1 else "non-pipeline"
            raise CheckpointError(
                f"resume: the universal checkpoint {saved.path} comes from a {kind} "
                f"run ({was}) and this run is {here}: universal checkpoints keep DeepSpeed's parameter names, which "
                f"differ between pipeline and non-pipeline runs. Fix: keep parallel.pipe "
                f"{'> 1' if saved.layout[0] > 1 else '= 1'}, or {export_fix}.")
        if zero_stage < 1:
            raise CheckpointError(
                f"resume: {saved.path} is a universal checkpoint and this run ({here}) uses ZeRO stage {zero_stage}; "
                "DeepSpeed restores universal checkpoints through the ZeRO optimizer only. Fix: set "
                '"zero_optimization": {"stage": 1} in the DeepSpeed JSON.')
        return
    if saved.layout == now or (saved.layout[:2] == now[:2] and not saved.optimizer_shards):
        return
    if saved.optimizer_shards and (saved.layout[0] > 1) == (pipe > 1):
        tag = os.path.basename(saved.path)
        fix = (f"convert it to a universal checkpoint and resume from that:\n"
               f"    python -m deepspeed.checkpoint.ds_to_universal --input_folder {saved.path} "
               f"--output_folder <new_dir>/{tag}\n"
               f"    echo {tag} > <new_dir>/latest\n"
               f"and set checkpoint.resume=<new_dir> (r1-ds then loads it with DeepSpeed's load_universal; this run "
               f"needs ZeRO stage >= 1); or resume with the saved layout {was}")
    elif saved.optimizer_shards:
        fix = f"{export_fix}; or resume with the saved layout {was}"
    else:
        fix = (f"resume with the saved layout {was}, or change only parallel.data; or {export_fix}. (Checkpoints "
               "without optimizer shards, i.e. fp32/fp16 without ZeRO, cannot be converted by ds_to_universal: train "
               "with ZeRO stage 1 to be able to change the layout later)")
    raise CheckpointError(f"resume: {saved.path} was saved by a run with layout {was}; this run is {here}, and "
                          "DeepSpeed cannot reshard that checkpoint's weights and optimizer state on load. "
                          f"Fix: {fix}.")


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
    """One checkpoint file, read inside `weights_only_loads` (weights-only unless the user trusts the
    checkpoint); a file that does not load is named, with the previous complete tag."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # the guard makes it weights-only
    except UnsafeFileError as err:
        raise CheckpointError(f"{err}. Nothing of it was loaded. Fix: {TRUST_FIX}.") from None
    except Exception as err:  # noqa: BLE001 - zip, pickle and I/O errors all mean the same: unreadable
        reason = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"{path} does not load ({type(err).__name__}: {reason}): truncated or corrupt."
                              f"{_fallback(os.path.dirname(path))}") from None


def _model_config(engine_state: dict, where: str):
    from .model import R1Config

    if "r1_model_config" not in engine_state:
        raise CheckpointError(f"{where} has no r1_model_config: it was not written by `r1-ds train`. Fix: export "
                              "checkpoints of r1-ds runs only.")
    return R1Config(**{k: v for k, v in engine_state["r1_model_config"].items()
                       if k not in ("architectures", "model_type", "transformers_version", "auto_map")})


def merge_tensor_ranks(per_rank: dict[int, dict], where: str) -> dict:
    """One full HF state dict from {tensor rank: that rank's HF state dict} (R1_TP_PLAN's shards)."""
    ranks = sorted(per_rank)
    if ranks != list(range(len(ranks))):
        raise CheckpointError(f"{where}: tensor-parallel shards {ranks} found, expected 0..{len(ranks) - 1}. Fix: "
                              "export a complete checkpoint folder (one file per tensor rank).")
    if len(ranks) == 1:
        return per_rank[0]
    from .parallel.tensor_parallel import TensorParallelError, merge_tensor_parallel_state_dicts

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
    from .parallel.pipeline import pipe_layer_prefixes

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
                raise CheckpointError(f"{tag_dir}: a ZeRO-3 checkpoint with {len(states)} tensor ranks; r1-ds does "
                                      "not train tensor parallel with ZeRO-3, so this folder is not one of its runs.")
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
        raise CheckpointError(f"{tag_dir} has neither a module in {os.path.basename(states[0])} nor layer_*-"
                              "model_states.pt files")
    return merge_tensor_ranks(per_rank, tag_dir), engine_state


def _universal_state_dict(tag_dir: str, engine_state: dict) -> dict:
    """HF state dict from `ds_to_universal` output: zero/<param name>/fp32.pt per parameter (tensor
    shards already merged). Pipeline names ("3.self_attn.q_proj.weight", "tied_modules.embed.weight") map
    through the layer prefixes. A tied `lm_head.weight` is skipped: ds_to_universal writes it from the
    module state of tensor rank 0 (it has no optimizer state of its own), i.e. as a vocabulary shard."""
    from .parallel.pipeline import TIED_KEY, pipe_layer_prefixes

    config = _model_config(engine_state, f"{tag_dir} (universal checkpoint)")
    prefixes = pipe_layer_prefixes(config)
    sd = {}
    for name in sorted(os.listdir(os.path.join(tag_dir, "zero"))):
        path = os.path.join(tag_dir, "zero", name, "fp32.pt")
        if not os.path.isfile(path) or (name == "lm_head.weight" and config.tie_word_embeddings):
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


def export_hf(ckpt: str, out: str, *, tag: str | None = None, dtype: str | None = None,
              trusted: bool = False) -> str:
    """Write a Hugging Face folder (config.json, model.safetensors, model code, tokenizer when the run
    had one) that `AutoModelForCausalLM.from_pretrained` loads; returns `out`. Any layout (pipe x tensor
    x data) gives one folder: tensor shards are merged, data replicas are one copy. Files are read
    weights-only (`trusted`: as they are). The folder is built under a temp name and renamed into place,
    so a killed export leaves no partial folder and an old export at `out` is replaced whole."""
    tag_dir = resolve_tag_dir(ckpt, tag)
    verify_tag(tag_dir, trusted=trusted)
    sd, engine_state = hf_state_dict(tag_dir, trusted=trusted)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{tag_dir}: weights hold NaN or Inf ({bad[:4]}{' ...' if len(bad) > 4 else ''}): the "
                              f"run had diverged when it saved this checkpoint.{_fallback(tag_dir)}")
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
        raise CheckpointError(f"{what} {path}: {parent} is not writable ({err.strerror}). Fix: choose a writable "
                              "folder, or change its permissions / mount.") from None


def _check_replaceable(out: str) -> None:
    """An existing `out` is replaced whole by the export: only an empty folder or a model folder (one with
    config.json) may be, never a folder of other files."""
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, "config.json")):
        raise CheckpointError(f"export folder {out} exists and is not a model folder (no config.json; it holds "
                              f"{sorted(os.listdir(out))[:5]}): the export would replace it whole. Fix: pass a new or "
                              "empty folder, or an earlier export to replace.")


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
    from .model import R1ForCausalLM
    from .model_card import prepare_release, write_model_card

    config = _model_config(engine_state, tag_dir)
    train_dtype = next(iter(sd.values())).dtype
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: train_dtype}[dtype]
    model = R1ForCausalLM(config)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(shapes[k])})" for k, v in sd.items() if k in shapes
             and v.shape != shapes[k]]
    if wrong:
        raise CheckpointError(f"{tag_dir}: weights do not have the model's shapes: {wrong[:4]}. Tensor-parallel "
                              "shards that were not merged look like this. Fix: export the original checkpoint "
                              "folder (all mp_rank_*/layer_* files), not a partial copy.")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise CheckpointError(f"{tag_dir}: weights do not match the R1 config: missing {sorted(set(missing) - allowed_missing)}"
                              f", unexpected {sorted(unexpected)}")
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.set_attn_implementation("eager")  # the reference; `from_pretrained(..., attn_implementation=...)` may change it
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
    write_model_card(out, model.config, step=engine_state.get("global_steps"),
                     train_config=engine_state.get("r1_train_config") or {}, layout=engine_state.get("r1_layout"),
                     has_tokenizer=tokenizer is not None)
