"""Run untrusted Python (generated code and its tests) in a throw-away subprocess.

Every run gets:
  - its own temporary working directory, deleted afterwards;
  - limits (resource.setrlimit): address space (memory), CPU seconds, file size, no core dumps;
  - a process-count limit: a cgroup `pids.max` when this process may create one (root; RLIMIT_NPROC
    does not bind root), else RLIMIT_NPROC;
  - where `unshare` works (root, or unprivileged user namespaces): new network, mount, pid and user
    namespaces: no network interface but loopback-down, every mount read-only except the working
    directory, all capabilities dropped, and every process of the run dies with the namespace;
  - a wall-clock limit, after which the whole process group is killed (start_new_session + killpg),
    and a kill of the group at the end in any case.

Where `unshare` fails, the run still has the limits, the directory and the group kill, but has the
network and the file system of this process: `isolation_warning()` says so, once per process.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

log = logging.getLogger("r1_ds.evaluation.sandbox")

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_launcher.py")
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--kill-child"]


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    timeout_s: float = 5.0  # wall clock, Python start-up included
    memory_bytes: int = 2 << 30  # address space (RLIMIT_AS)
    max_processes: int = 32  # processes and threads of the run
    isolate: bool = True  # use namespaces where the system allows


@dataclass(frozen=True)
class RunResult:
    passed: bool
    result: str  # "passed", "timed out", or "failed: <last line of stderr>"
    stdout: str = ""


@functools.cache
def namespaces_available() -> bool:
    """True when `unshare` can create the network/mount/pid/user namespaces and the launcher can make
    the file system read-only inside them (checked once by running it)."""
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory(prefix="r1_sandbox_probe_") as d:
        prog = os.path.join(d, "probe.py")
        with open(prog, "w") as f:
            f.write("print('ok')\n")
        try:
            proc = subprocess.run(
                [*UNSHARE, sys.executable, "-I", "-S", LAUNCHER, d, prog, str(1 << 30), "5", "32", "1"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


@functools.cache
def process_limit_available() -> bool:
    """True when a run's process count can be capped: a pids cgroup can be created, or this process is
    not root (RLIMIT_NPROC binds every other user)."""
    probe = _PidsCgroup(1)
    created = probe.path is not None
    probe.remove()
    return created or os.geteuid() != 0


@functools.cache
def isolation_warning() -> str | None:
    """None when runs are isolated; else the sentences to show the user (logged once)."""
    msgs = []
    if not namespaces_available():
        msgs.append(
            "sandbox: `unshare` cannot create network/mount/user namespaces here, so generated code runs "
            "WITH network access and write access outside its directory (limits, temporary directory and "
            "group kill still apply). Run the evaluation as root, enable unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1), or inside a container without network."
        )
    if not process_limit_available():
        msgs.append(
            "sandbox: running as root without a writable pids cgroup, so a run's process count is not "
            "capped (RLIMIT_NPROC does not bind root); the wall-clock group kill still ends it. Run as "
            "another user or where /sys/fs/cgroup is writable."
        )
    for m in msgs:
        log.warning("%s", m)
    return " ".join(msgs) or None


class _PidsCgroup:
    """A cgroup with pids.max for one run, when this process may create one (else inert)."""

    ROOTS = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup")

    def __init__(self, max_pids: int):
        self.path = None
        for root in self.ROOTS:
            path = os.path.join(root, f"r1_ds_sandbox_{os.getpid()}_{uuid.uuid4().hex[:8]}")
            try:
                os.mkdir(path)
            except OSError:
                continue
            try:
                with open(os.path.join(path, "pids.max"), "w") as f:
                    f.write(str(max_pids))
                self.path = path
                return
            except OSError:
                os.rmdir(path)

    def wrap(self, cmd: list[str]) -> list[str]:
        """`cmd` started by a shell that first moves itself into the cgroup, so the command and all its
        descendants count against pids.max from their start (no preexec_fn: the caller has threads)."""
        if not self.path:
            return cmd
        return ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', self.path, *cmd]

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup (those that left the process group too)."""
        if not self.path:
            return
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def remove(self) -> None:
        """Remove the cgroup once its killed processes are gone (they exit asynchronously)."""
        for _ in range(100):
            if not self.path:
                return
            try:
                os.rmdir(self.path)
                self.path = None
            except OSError:
                self.kill_all()
                time.sleep(0.02)
        log.warning("sandbox cgroup %s is still busy after 2 s; remove it with rmdir once empty", self.path)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(program: str, limits: Limits = Limits()) -> RunResult:
    """Run `program` (Python source) in the sandbox. It passes when it exits 0 and prints the run's
    marker last: the marker line is appended here, so a program that exits early (sys.exit(0) before
    its checks) does not pass."""
    marker = f"__r1_ds_done_{uuid.uuid4().hex}__"
    isolated = limits.isolate and namespaces_available()
    if limits.isolate:
        isolation_warning()
    workdir = tempfile.mkdtemp(prefix="r1_sandbox_")
    # stdout/stderr go to files outside the working directory: RLIMIT_FSIZE caps what a program can
    # print (a pipe would buffer it all in this process), and no escaped child can hold a pipe open
    outdir = tempfile.mkdtemp(prefix="r1_sandbox_out_")
    cgroup = _PidsCgroup(limits.max_processes)
    try:
        path = os.path.join(workdir, "program.py")
        with open(path, "w") as f:
            f.write(program + f"\nprint({marker!r})\n")
        cpu = str(int(limits.timeout_s) + 1)
        cmd = [
            sys.executable,
            "-I",
            "-S",
            LAUNCHER,
            workdir,
            path,
            str(limits.memory_bytes),
            cpu,
            str(limits.max_processes),
            "1" if isolated else "0",
        ]
        out_path, err_path = os.path.join(outdir, "stdout"), os.path.join(outdir, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                cgroup.wrap([*UNSHARE, *cmd] if isolated else cmd),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                env=_clean_env(),
            )
        try:
            proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            return RunResult(False, "timed out")
        finally:
            _kill_group(proc.pid)  # the whole group: on time-out, and whatever the program left behind
            cgroup.kill_all()  # and, where a cgroup holds the run, processes that left the group
            proc.wait()
        text, errtext = _tail(out_path), _tail(err_path)
        lines = text.rstrip("\n").split("\n")
        if proc.returncode == 0 and lines[-1] == marker:
            return RunResult(True, "passed", "\n".join(lines[:-1]))
        last = errtext.strip().splitlines()[-1] if errtext.strip() else f"exit code {proc.returncode}"
        return RunResult(False, f"failed: {last}", text)
    finally:
        cgroup.remove()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(outdir, ignore_errors=True)


def _tail(path: str, limit: int = 1 << 16) -> str:
    """The last `limit` bytes of a file, decoded."""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - limit))
        return f.read().decode(errors="replace")


def _clean_env() -> dict:
    """A minimal environment: no tokens or proxies of this process reach the program."""
    keep = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    return keep


__all__ = ["Limits", "RunResult", "isolation_warning", "namespaces_available", "process_limit_available", "run_python"]
