"""Run a function on N local CPU ranks over gloo, the way DeepSpeed would see them (the tests' and the CPU
benchmarks' harness).

    from r1_ds.local_ranks import run_distributed

    def _body(scale):                     # top level, so that it pickles
        import deepspeed.comm as dist
        t = torch.ones(1) * scale
        dist.all_reduce(t)
        return t.item()

    assert run_distributed(_body, 2, 3.0) == [6.0, 6.0]

Each rank is a fresh interpreter (spawn context) with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, LOCAL_SIZE,
MASTER_ADDR=127.0.0.1, a free MASTER_PORT, DS_ACCELERATOR=cpu and one torch thread. The harness calls
`deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)` before `fn`, so `deepspeed.initialize`
inside `fn` finds the process group ready. Results come back in rank order; they must pickle (tensors do).
A rank that raises fails the call with that rank's traceback; on a failure or a timeout the other ranks are killed.

DeepSpeed's CPU backend loads a shared-memory all-reduce op, `deepspeed_shm_comm`, at every `init_distributed`:
a JIT build on first use (~30 s on 2 cores, cached in ~/.cache/torch_extensions), then a 66 MB file per rank in
/dev/shm that DeepSpeed 0.19.8 never unlinks (`shared_close` is never called), so every run leaks RAM until the
machine runs out. Training never uses it (only `inference_all_reduce`, which falls back to the process group), so the
harness turns it off: no build, no leak. Set R1_TEST_SHM_OP=1 to keep it (the harness then unlinks the run's files).
The trainer (`r1_ds.distributed.init_distributed`) turns it off the same way for deepspeed/torchrun launches on CPU.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import queue as queue_mod
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

__all__ = ["run_distributed", "DistributedError"]

_GRACE_S = 5.0  # how long a rank may take to exit after it reported, before it is killed


class DistributedError(RuntimeError):
    """A rank raised, died, or did not finish in time; the message holds each failing rank's traceback."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _environ(env: dict[str, str]):
    """Set env vars in this process while a child starts (a spawned child copies os.environ at start)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker(fn_bytes: bytes, rank: int, args: tuple, kwargs: dict, results) -> None:
    try:
        import torch

        torch.set_num_threads(1)
        import deepspeed

        if os.environ.get("R1_TEST_SHM_OP") != "1":
            from .parallel.deepspeed_patches import disable_cpu_shm_comm

            disable_cpu_shm_comm()  # see the module docstring
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
        fn = pickle.loads(fn_bytes)
        out = fn(*args, **kwargs)
        # pickle here, not in the queue's feeder thread: errors surface in this rank, and tensors travel by value
        # rather than as shared-memory handles that die with this process.
        results.put((rank, True, pickle.dumps(out)))
    except BaseException:  # noqa: BLE001 - everything, including SystemExit, goes back to the parent
        results.put((rank, False, traceback.format_exc()))
        return
    try:
        from .distributed import shutdown_distributed

        shutdown_distributed()
    except Exception:  # noqa: BLE001 - teardown of a finished run must not turn a pass into a failure
        pass


def _kill(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + _GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


TIMEOUT_SCALE = float(os.environ.get("R1_TEST_TIMEOUT_SCALE", "1.0"))  # > 1 on slow or busy machines


def scaled_timeout(seconds: float) -> float:
    """A run's time limit, times R1_TEST_TIMEOUT_SCALE (run_distributed applies it to its own)."""
    return seconds * TIMEOUT_SCALE


def run_distributed(fn: Callable[..., Any], world_size: int, *args, timeout: float = 300, **kwargs) -> list:
    """Run `fn(*args, **kwargs)` on `world_size` gloo ranks; return the per-rank results in rank order."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: must be >= 1; pass the number of ranks to spawn")
    fn_bytes = pickle.dumps(fn)  # fails here, clearly, for lambdas and nested functions
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = str(_free_port())
    procs = []
    for rank in range(world_size):
        env = {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "LOCAL_SIZE": str(world_size),  # DeepSpeed's CPU accelerator reads it as the device count
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "DS_ACCELERATOR": "cpu",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        p = ctx.Process(target=_worker, args=(fn_bytes, rank, args, kwargs, results), name=f"rank{rank}")
        with _environ(env):
            p.start()
        procs.append(p)

    outputs: dict[int, Any] = {}
    failures: dict[int, str] = {}
    timeout = scaled_timeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while len(outputs) + len(failures) < world_size and not failures:
            try:
                rank, ok, payload = results.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            except queue_mod.Empty:
                dead = [p for i, p in enumerate(procs) if not p.is_alive() and i not in outputs and i not in failures]
                if dead:
                    # give a dying rank's queued message a moment to arrive before calling it silent
                    time.sleep(0.5)
                    while not results.empty():
                        rank, ok, payload = results.get()
                        (outputs if ok else failures)[rank] = pickle.loads(payload) if ok else payload
                    for i, p in enumerate(procs):
                        if not p.is_alive() and i not in outputs and i not in failures:
                            failures[i] = f"exited with code {p.exitcode} without reporting a result"
                if time.monotonic() >= deadline and len(outputs) + len(failures) < world_size:
                    missing = [i for i in range(world_size) if i not in outputs and i not in failures]
                    raise DistributedError(
                        f"ranks {missing} of {world_size} did not finish within timeout={timeout}s "
                        f"(finished: {sorted(outputs)}); they were killed. Raise `timeout` or look for a collective "
                        "that only some ranks call."
                    ) from None
                continue
            if ok:
                outputs[rank] = pickle.loads(payload)
            else:
                failures[rank] = payload
        if failures:
            text = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(failures.items()))
            raise DistributedError(f"{len(failures)} of {world_size} ranks failed:\n{text}")
        for p in procs:
            p.join(_GRACE_S)
    finally:
        _kill(procs)
        # DeepSpeed's shm op (if R1_TEST_SHM_OP=1) leaves deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>
        for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*"):
            with contextlib.suppress(OSError):
                os.remove(path)
    return [outputs[r] for r in range(world_size)]
