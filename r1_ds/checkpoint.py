"""DeepSpeed checkpoints: atomic save and resume. The tag folders (`latest`, completeness, the check of every
file before a load) are read by r1_ds.checkpoint_tags, the export to a Hugging Face folder is
r1_ds.checkpoint_export; their public names are importable from here as well.

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
import shutil
from dataclasses import dataclass

import torch

from data_prep.atomic import TMP_PREFIX, atomic_write_text, fsync_dir  # the one implementation of atomic writes

# tags and export live in their own modules; their names are importable from here too (`ckpt.export_hf`)
from .checkpoint_export import (  # noqa: F401
    check_output_folder,
    export_hf,
    hf_state_dict,
    resolve_tag_dir,
)
from .checkpoint_tags import (  # noqa: F401
    ASIDE_PREFIX,
    TRUST_FIX,
    CheckpointError,
    complete_tags,
    is_complete,
    last_good,
    latest_problem,
    list_tags,
    read_latest,
    step_of,
    tag_for,
    verify_tag,
)
from .metrics import log0
from .parallel.deepspeed_patches import weights_only_loads
from .precision import training_dtype
from .safe_load import UnsafeFileError

UNIVERSAL_INFO = {"universal_checkpoint_version": 0.2}  # what ds_to_universal requires in client_state


def write_latest(save_dir: str, tag: str) -> None:
    """Point `latest` at `tag`, atomically (readers see the old or the new tag, never a partial file)."""
    atomic_write_text(os.path.join(save_dir, "latest"), tag)


def _clean_leftovers(save_dir: str) -> None:
    """Remove a crashed save's `.tmp-*` leftovers; an aside folder whose tag is missing (a crash while
    re-saving that step) is renamed back instead, so that `latest` names a complete folder again."""
    for stale in glob.glob(os.path.join(save_dir, TMP_PREFIX + "*")):
        name = os.path.basename(stale)
        if name.startswith(ASIDE_PREFIX) and os.path.isdir(stale):
            final = os.path.join(save_dir, name[len(ASIDE_PREFIX) :])
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
    for old in older[: max(0, len(older) - (keep - 1))]:
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
        engine.save_checkpoint(
            save_dir,
            tag=tmp_tag,
            client_state={
                **client_state,
                "universal_checkpoint_info": client_state.get("universal_checkpoint_info", UNIVERSAL_INFO),
            },
            save_latest=False,
        )
    except (OSError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "write" not in str(err):  # torch.save's "file write failed"
            raise
        shutil.rmtree(os.path.join(save_dir, tmp_tag), ignore_errors=True)  # frees the space it took
        prev = last_good(save_dir)
        raise CheckpointError(
            f"saving the checkpoint of step {step} to {save_dir} failed ({err}); the partial "
            f"folder was removed and {prev or 'no earlier checkpoint'} stays the one to resume from. "
            "Fix: free disk space (or choose a checkpoint.dir with room), then resume."
        ) from None
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
            raise CheckpointError(
                f"checkpoint.resume={resume!r}: {path}/latest is empty. Fix: write an existing tag "
                f"({list_tags(path)}) into latest, or pass a tag folder."
            )
        return path, _existing_tag(path, tag)
    if os.path.isdir(path) and glob.glob(os.path.join(path, "mp_rank_*_model_states.pt")):
        return os.path.dirname(path), os.path.basename(path)
    raise CheckpointError(
        f"checkpoint.resume={resume!r} is neither a checkpoint folder (with a `latest` file) nor a "
        'tag folder (with mp_rank_*_model_states.pt). Fix: pass one of those, "auto" or "none".'
    )


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
        log0(
            "checkpoint folder %s: `latest` %s; resuming from the newest complete checkpoint %s",
            save_dir,
            problem,
            complete[-1],
            level=logging.WARNING,
        )
        return save_dir, complete[-1]
    if tag is None and not list_tags(save_dir):
        return None  # a new run
    raise CheckpointError(
        f"{save_dir}/latest {problem}, and no global_step* folder there is complete (holds "
        f"mp_rank_00_model_states.pt): {list_tags(save_dir)}. Fix: restore the checkpoint, or move "
        "the folder away / set checkpoint.resume=none to start a new run (it would overwrite "
        "these folders)."
    )


def _existing_tag(save_dir: str, tag: str) -> str:
    """`tag` (read from `save_dir`/latest), or a CheckpointError when its folder is missing."""
    if os.path.isdir(os.path.join(save_dir, tag)):
        return tag
    aside = os.path.join(save_dir, ASIDE_PREFIX + tag)
    fix = (
        f"rename {aside} to {os.path.join(save_dir, tag)} (a re-save of that step was interrupted)"
        if os.path.isdir(aside)
        else f"restore the folder, or write an existing tag ({list_tags(save_dir)}) into latest"
    )
    raise CheckpointError(f"{save_dir}/latest names {tag!r}, which does not exist. Fix: {fix}.")


def load(engine, load_dir: str, tag: str, *, trusted: bool = False) -> dict:
    """Load weights, optimizer, scheduler and engine counters (DeepSpeed's reads weights-only, see
    r1_ds.safe_load); return the client state."""
    try:
        with weights_only_loads(trusted):
            path, client_state = engine.load_checkpoint(load_dir, tag=tag)
    except UnsafeFileError as err:
        raise CheckpointError(f"{err}. Nothing of it was loaded. Fix: {TRUST_FIX}.") from None
    if path is None:
        raise CheckpointError(
            f"DeepSpeed could not load {os.path.join(load_dir, tag)}. Fix: check the folder is "
            "complete, or start fresh with checkpoint.resume=none."
        )
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
    return SavedCheckpoint(
        path=path,
        layout=layout,
        universal=os.path.isdir(os.path.join(path, "zero")),
        optimizer_shards=bool(glob.glob(os.path.join(path, "*optim_states.pt"))),
        model_config=model_config,
        dtype=dtype,
    )


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
        log0(
            "resume: %s does not record its parallel layout; loading it as %s",
            saved.path,
            _layout_str(now),
            level=logging.WARNING,
        )
        return
    was, here = _layout_str(saved.layout), _layout_str(now)
    export_fix = (
        f"export it (`r1-ds export {saved.path} <hf_dir>`) and start a new run with model.init_from=<hf_dir> "
        "(weights only: the optimizer restarts)"
    )
    if saved.universal:
        if (saved.layout[0] > 1) != (pipe > 1):
            kind = "pipeline" if saved.layout[0] > 1 else "non-pipeline"
            raise CheckpointError(
                f"resume: the universal checkpoint {saved.path} comes from a {kind} "
                f"run ({was}) and this run is {here}: universal checkpoints keep DeepSpeed's parameter names, which "
                f"differ between pipeline and non-pipeline runs. Fix: keep parallel.pipe "
                f"{'> 1' if saved.layout[0] > 1 else '= 1'}, or {export_fix}."
            )
        if zero_stage < 1:
            raise CheckpointError(
                f"resume: {saved.path} is a universal checkpoint and this run ({here}) uses ZeRO stage {zero_stage}; "
                "DeepSpeed restores universal checkpoints through the ZeRO optimizer only. Fix: set "
                '"zero_optimization": {"stage": 1} in the DeepSpeed JSON.'
            )
        return
    if saved.layout == now or (saved.layout[:2] == now[:2] and not saved.optimizer_shards):
        return
    if saved.optimizer_shards and (saved.layout[0] > 1) == (pipe > 1):
        tag = os.path.basename(saved.path)
        fix = (
            f"convert it to a universal checkpoint and resume from that:\n"
            f"    python -m deepspeed.checkpoint.ds_to_universal --input_folder {saved.path} "
            f"--output_folder <new_dir>/{tag}\n"
            f"    echo {tag} > <new_dir>/latest\n"
            f"and set checkpoint.resume=<new_dir> (r1-ds then loads it with DeepSpeed's load_universal; this run "
            f"needs ZeRO stage >= 1); or resume with the saved layout {was}"
        )
    elif saved.optimizer_shards:
        fix = f"{export_fix}; or resume with the saved layout {was}"
    else:
        fix = (
            f"resume with the saved layout {was}, or change only parallel.data; or {export_fix}. (Checkpoints "
            "without optimizer shards, i.e. fp32/fp16 without ZeRO, cannot be converted by ds_to_universal: train "
            "with ZeRO stage 1 to be able to change the layout later)"
        )
    raise CheckpointError(
        f"resume: {saved.path} was saved by a run with layout {was}; this run is {here}, and "
        "DeepSpeed cannot reshard that checkpoint's weights and optimizer state on load. "
        f"Fix: {fix}."
    )
