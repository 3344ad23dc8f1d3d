"""One run per output folder, and no rank outliving its launcher.

`RunLock`: rank 0 holds an exclusive `flock` on `<output_dir>/run.lock` (and on `<checkpoint.dir>/run.lock`
when the checkpoints live elsewhere) for the whole run and writes its pid and host into it. The kernel drops the lock when the process dies however it dies (kill -9 included),
so a dead run never leaves the folder stuck: the next run takes the lock over and logs whose it was. A
second live run into the same folder is refused with the holder's pid and host.

`exit_with_launcher`: a rank started by `deepspeed`, `torchrun` or `accelerate launch` ends when that
launcher dies. A daemon thread watches the parent and the launcher processes above it (the `deepspeed`
runner sits one level above its per-node `deepspeed.launcher.launch`, which survives the runner's death)
and ends the rank when one of them is gone. (prctl's PR_SET_PDEATHSIG is not used: it fires when the
parent *thread* that started the rank exits, which a launcher may do while it lives on.) Checkpoints are atomic, so ending a rank at any point loses at most the steps since the last
save.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time

log = logging.getLogger("r1_ds.run_lock")

LOCK_NAME = "run.lock"
_HELD: dict[str, RunLock] = {}  # locks this process holds, by path: a process re-entering train() for a folder
# it already holds (a notebook, a test after a failed run) takes it over itself


class RunLockError(ValueError):
    """Another live run holds the output folder."""


class RunLock:
    """An exclusive lock on an output folder (see the module docstring)."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        mine = _HELD.pop(os.path.realpath(self.path), None)
        if mine is not None:
            mine.release()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(fd)
            os.close(fd)
            raise RunLockError(
                f"{os.path.dirname(self.path)} is in use by another run (pid {holder.get('pid')} on host "
                f"{holder.get('host')}, since {holder.get('started')}); two runs would interleave their checkpoints. "
                "Fix: wait for that run or stop it, or pass another --output-dir (--checkpoint-dir)."
            ) from None
        previous = _read(fd)
        if previous.get("pid"):
            log.warning(
                "took over %s from run pid %s on host %s, which is no longer running",
                self.path,
                previous.get("pid"),
                previous.get("host"),
            )
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            ).encode(),
            0,
        )
        os.fsync(fd)
        self._fd = fd
        _HELD[os.path.realpath(self.path)] = self
        return self

    def release(self) -> None:
        """Empty the file and drop the lock (the file stays: removing it could race a new run's open)."""
        if self._fd is None:
            return
        _HELD.pop(os.path.realpath(self.path), None)
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def lock_run_folders(out_dir: str, ckpt_dir: str, *, rank: int) -> list[RunLock]:
    """Rank 0 locks the output folder, and the checkpoint folder too when it lies outside it (two runs with
    their own output folders must not share one either); every rank raises the same RunLockError when one is
    held (collective). Returns rank 0's locks (none on the other ranks)."""
    folders = [out_dir]
    if os.path.relpath(os.path.realpath(ckpt_dir), os.path.realpath(out_dir)).startswith(os.pardir):
        folders.append(ckpt_dir)
    locks, message = [], None
    if rank == 0:
        try:
            for folder in folders:
                locks.append(RunLock(folder).acquire())
        except RunLockError as err:
            message = str(err)
            for lock in locks:
                lock.release()
            locks = []
    import torch.distributed as tdist

    if tdist.is_initialized() and tdist.get_world_size() > 1:
        box = [message]
        tdist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise RunLockError(message)
    return locks


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- launcher watchdog

_LAUNCHER_WORDS = ("deepspeed", "torchrun", "torch.distributed", "accelerate", "mpirun", "mpiexec", "launch")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process from /proc, None when it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def launcher_chain(pid: int | None = None, depth: int = 4) -> list[tuple[int, int]]:
    """(pid, start time) of the parent and of the launcher processes above it (their command lines name a
    launcher), nearest first."""
    chain = []
    pid = os.getppid() if pid is None else pid
    while pid > 1 and len(chain) < depth:
        st = _stat(pid)
        if st is None or (chain and not any(w in _cmdline(pid) for w in _LAUNCHER_WORDS)):
            break
        chain.append((pid, st[1]))
        pid = st[0]
    return chain


def launched() -> bool:
    """Started by a launcher (not `python -m r1_ds.train` alone, which sets these itself later)."""
    return "LOCAL_RANK" in os.environ or "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ


def exit_with_launcher(interval_s: float = 1.0) -> threading.Thread | None:
    """Make this rank end when its launcher dies (see the module docstring); no-op when not launched or not
    on Linux. Returns the watchdog thread."""
    if not launched() or not os.path.isdir("/proc"):
        return None
    chain = launcher_chain()
    if not chain:
        return None

    def watch():
        while True:
            for pid, started in chain:
                st = _stat(pid)
                if st is None or st[1] != started:
                    log.error(
                        "the launcher process %d is gone: this rank (pid %d) exits; the last complete "
                        "checkpoint stays the one `latest` names",
                        pid,
                        os.getpid(),
                    )
                    logging.shutdown()
                    os._exit(143)
            time.sleep(interval_s)

    thread = threading.Thread(target=watch, name="r1-launcher-watchdog", daemon=True)
    thread.start()
    return thread
