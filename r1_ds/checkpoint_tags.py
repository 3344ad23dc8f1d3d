"""The tag folders of a checkpoint folder: their names, `latest`, which are complete, and a check of every
file of a tag before anything loads it. Read by saving and resuming (r1_ds.checkpoint) and by export
(r1_ds.checkpoint_export); the folder layout is described in r1_ds/checkpoint.py."""

from __future__ import annotations

import glob
import os
import re

from data_prep.atomic import TMP_PREFIX

from .safe_load import UnsafeFileError, unsafe_globals

ASIDE_PREFIX = TMP_PREFIX + "old-"  # an existing tag folder being replaced by a new save of the same step


class CheckpointError(ValueError):
    """A checkpoint is missing or unreadable; the message names the path and the fix."""


def tag_for(step: int) -> str:
    return f"global_step{step}"


def step_of(tag: str) -> int:
    return int(tag[len("global_step") :])


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
    tags = (
        [
            d
            for d in os.listdir(save_dir)
            if re.fullmatch(r"global_step\d+", d) and os.path.isdir(os.path.join(save_dir, d))
        ]
        if os.path.isdir(save_dir)
        else []
    )
    return sorted(tags, key=step_of)


TRUST_FIX = (
    "if you trust where this checkpoint comes from, pass --trust-checkpoint (checkpoint.trust=true), "
    "which unpickles it as it is"
)


def fallback_hint(tag_dir: str) -> str:
    """What to do instead of loading `tag_dir`: the previous complete tag, if there is one."""
    prev = previous_complete(tag_dir)
    if prev is None:
        return (
            " No earlier complete checkpoint exists in that folder. Fix: restore the file from a copy, or start a "
            "new run (checkpoint.resume=none, another output folder)."
        )
    return (
        f" The previous complete checkpoint is {prev}. Fix: resume from it (checkpoint.resume={prev}) or export "
        f"it (r1-ds export {prev} OUT), or restore the file from a copy."
    )


def verify_tag(tag_dir: str, *, trusted: bool = False) -> None:
    """Open the pickle of every .pt file of a tag folder (not its tensors) before anything loads it: a
    truncated or garbage file, or one that names callables outside the allowlist, is refused here with its
    name and the previous complete tag, on every rank alike (they read the same shared folder)."""
    files = sorted(
        glob.glob(os.path.join(tag_dir, "*.pt"))
        + glob.glob(os.path.join(tag_dir, "zero", "*.pt"))
        + glob.glob(os.path.join(tag_dir, "zero", "*", "*.pt"))
    )
    if not files:
        raise CheckpointError(f"{tag_dir} holds no .pt files: it is not a complete checkpoint.{fallback_hint(tag_dir)}")
    for path in files:
        try:
            names = unsafe_globals(path)
        except Exception as err:  # noqa: BLE001 - zip, pickle and I/O errors all mean the same: unreadable
            reason = str(err).split(". ")[0].split("\n")[0]
            raise CheckpointError(
                f"{path} is not a readable checkpoint file ({type(err).__name__}: {reason}): "
                f"truncated or corrupt.{fallback_hint(tag_dir)}"
            ) from None
        if names and not trusted:
            raise CheckpointError(f"{UnsafeFileError(path, names)}. Nothing of it was loaded. Fix: {TRUST_FIX}.")
