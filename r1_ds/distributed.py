"""The process around a run: join the process group however we were launched, tear it down, end the rank,
and the few facts about the process that the trainer, the CLI, the benchmarks and the tests share
(launched by accelerate? peak memory so far?).

    init_distributed()            # deepspeed / torchrun / accelerate / mpirun / a bare `python -m ...`
    ...                           # build, train, save
    shutdown_distributed()        # a library run ends here (tests, notebooks)
    exit_process(code)            # a launched rank ends here (`r1-ds`, `python -m r1_ds.train`, benchmarks)

DeepSpeed and torch are imported when a function needs them, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import NoReturn

from .extras import require

__all__ = ["exit_process", "init_distributed", "peak_memory_gib", "shutdown_distributed", "under_accelerate"]

_MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
_TORCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


def init_distributed() -> None:
    """Join the process group however we were launched: deepspeed / torchrun / accelerate set the
    torch variables; mpirun (deepspeed --launcher openmpi/mpich, srun with PMI) is discovered through
    mpi4py; a bare `python -m r1_ds.train` becomes a world of one."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    from .parallel.deepspeed_patches import disable_cpu_shm_comm

    if get_accelerator().device_name() == "cpu":
        disable_cpu_shm_comm()  # a JIT build and a leaked /dev/shm file per process, for an op training never uses

    if all(k in os.environ for k in _TORCH_ENV):
        deepspeed.init_distributed(auto_mpi_discovery=False)
    elif any(k in os.environ for k in _MPI_ENV):
        require("mpi4py.MPI", extra="mpi", purpose="an MPI launch (mpirun, deepspeed --launcher openmpi/mpich)")
        deepspeed.init_distributed(auto_mpi_discovery=True)  # sets RANK, LOCAL_RANK, ... from MPI
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for key, value in (
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", str(port)),
        ):
            os.environ.setdefault(key, value)
        deepspeed.init_distributed(auto_mpi_discovery=False)


def under_accelerate() -> bool:
    """True in a process that `accelerate launch --use_deepspeed` started."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


_RAN_DISTRIBUTED = False  # set once this process has torn a process group down: see exit_process


def shutdown_distributed() -> None:
    """Tear the process groups down at the end of a run (clean, or a user error every rank raised alike),
    as torch's docs ask. No barrier: the run's last collective (the checkpoint save) has completed on
    every rank, and a rank that failed otherwise must not leave the others waiting here."""
    global _RAN_DISTRIBUTED
    if "torch.distributed" not in sys.modules:  # nothing imported it, so no process group exists (`r1-ds prep`)
        return
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        from .parallel.tensor_parallel import forget_groups

        forget_groups()
        tdist.destroy_process_group()
        _RAN_DISTRIBUTED = True


def exit_process(code: int) -> NoReturn:
    """End a launched rank (`python -m r1_ds.train`, the `r1-ds` script, benchmark ranks) with `code`.

    Once a process group has run here, skip the interpreter's teardown. CI lost a finished 4-rank torchrun
    run (once in many) to a rank that died at exit with SIGABRT, "terminate called without an active
    exception" (a C++ thread destroyed while still joinable), although its process groups had been
    destroyed: objects of the communication stack that DeepSpeed and our tensor-parallel groups still
    reference are freed during Python's finalization, in no fixed order (pytorch/pytorch#179291 is about
    the same hazard). The launcher then fails the job and kills the other ranks. Nothing is lost by
    skipping the teardown: checkpoints, shards and run files are written atomically and closed by then;
    logs and the std streams are flushed here, and MPI is finalized (mpirun reports a rank that exits
    without MPI_Finalize as failed).
    Without distributed state it is a plain `sys.exit`. Never call it from a library or a test process."""
    shutdown_distributed()
    if not _RAN_DISTRIBUTED:
        sys.exit(code)
    logging.shutdown()
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe must not turn success into a traceback
            stream.flush()
    os._exit(code)


def peak_memory_gib() -> float:
    """Peak memory of this rank so far: allocated GPU memory on CUDA, the process's peak RSS on CPU."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
