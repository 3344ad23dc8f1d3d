"""Runs inside the sandbox's fresh namespaces (network, mount, pid, user; see sandbox.py) before the
untrusted program: it makes every mount read-only except the working directory, drops every
capability (so the program cannot remount anything writable), applies the resource limits, and execs
Python on the program. Standard library only: it runs under `python -I -S`.

    python -I -S sandbox_launcher.py WORKDIR PROGRAM MEMORY_BYTES CPU_SECONDS MAX_PROCS ISOLATE_FS
"""

import ctypes
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_RELATIME = 32, 1024, 2048, 4096, 16384, 1 << 21
# A remount inside a user namespace must keep the flags the outer namespace locked, or it fails (EPERM).
_KEPT = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}


def _mount(libc, source, target, flags) -> None:
    if libc.mount(source, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def read_only_except(workdir: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    _mount(libc, workdir.encode(), workdir, MS_BIND | MS_REC)  # its own mount, left writable below
    with open("/proc/self/mountinfo") as f:
        mounts = [(line.split()[4].replace("\\040", " "), line.split()[5].split(",")) for line in f]
    for point, opts in mounts:
        if point == workdir:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for o in opts:
            flags |= _KEPT.get(o, 0)
        try:
            _mount(libc, None, point, flags)
        except OSError:
            if point == "/":  # the root must be read-only; a mount hidden under another may refuse
                raise


PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 24, 28, 38
SECBIT_NOROOT, SECBIT_NOROOT_LOCKED = 1, 2


def drop_capabilities() -> None:
    """uid 0 of the namespace keeps no capability across exec: empty bounding set, no root fixup."""
    libc = ctypes.CDLL(None, use_errno=True)
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    if (
        cap < 30
        or libc.prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED, 0, 0, 0) != 0
        or libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
    ):
        raise OSError(ctypes.get_errno(), "could not drop capabilities")


def main() -> None:
    workdir, program, memory, cpu, procs, isolate_fs = sys.argv[1:7]
    if isolate_fs == "1":
        read_only_except(workdir)
        drop_capabilities()
    os.chdir(workdir)
    limits = {
        resource.RLIMIT_AS: int(memory),
        resource.RLIMIT_CPU: int(cpu),
        resource.RLIMIT_NPROC: int(procs),
        resource.RLIMIT_FSIZE: 16 << 20,
        resource.RLIMIT_CORE: 0,
    }
    for res, value in limits.items():
        resource.setrlimit(res, (value, value))
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", program])


if __name__ == "__main__":
    main()
