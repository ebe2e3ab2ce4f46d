"""From the launcher's environment to an initialised torch.distributed world.

One `harness-train` command runs under torchrun, srun or mpiexec, or as a plain single process:
- torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
- srun sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID inside a job step;
- mpiexec (MPICH's PMI_RANK, Open MPI's OMPI_COMM_WORLD_RANK, PMIx's PMIX_RANK): mpi4py says.
Under srun and mpiexec the rendezvous comes from MPI: rank 0 broadcasts its host address and a
free port (node names from `scontrol` do not always resolve). NCCL where CUDA is present, gloo
otherwise.
"""

from __future__ import annotations

import datetime
import gc
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from harness.distributed.host_memory import keep_freed_memory


class LaunchError(RuntimeError):
    """The launcher's environment is inconsistent; the message says what to change."""


@dataclass(frozen=True)
class LaunchInfo:
    launcher: str        # "single", "torchrun", "srun" or "mpiexec"
    rank: int
    world_size: int
    local_rank: int
    init_method: str     # torch.distributed rendezvous: "env://" or "tcp://host:port"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _reachable_address() -> str:
    """This host's address as other nodes reach it (the interface of the default route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))   # no packet is sent; this picks the outgoing interface
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def detect(env: dict | None = None) -> str:
    """Name the launcher that started this process, from its environment variables alone."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env):
        return "torchrun"
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return "srun"
    if any(k in env for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")):
        return "mpiexec"
    return "single"


def _mpi_rendezvous(launcher: str, timeout_s: float) -> LaunchInfo:
    from mpi4py import (
        MPI,  # only where an MPI launcher started us: mpi4py initialises MPI on import
    )

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if launcher == "srun":
        ntasks = int(os.environ.get("SLURM_NTASKS", size))
        if size != ntasks:
            raise LaunchError(
                f"rank {rank}: MPI world size {size} != SLURM_NTASKS {ntasks}; the srun --mpi= plugin does not "
                "match this MPI (MPICH wants --mpi=pmi2, Open MPI --mpi=pmix), so every task is alone")
        local_rank = int(os.environ.get("SLURM_LOCALID", 0))
    else:
        local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    host, port = bcast_object(comm, (_reachable_address(), _free_port()) if rank == 0 else None, timeout_s=timeout_s)
    return LaunchInfo(launcher, rank, size, local_rank, f"tcp://{host}:{port}")


def bcast_object(comm, obj, root: int = 0, timeout_s: float = 600.0):
    """comm.bcast(obj, root) that gives up after `timeout_s` with an error naming the root: the
    pickled object travels in two non-blocking broadcasts (its length, then its bytes), polled."""
    import pickle

    import numpy as np

    payload = pickle.dumps(obj) if comm.Get_rank() == root else b""
    length = np.array([len(payload)], dtype=np.int64)
    _wait(comm.Ibcast(length, root=root), comm, root, timeout_s)
    buffer = np.frombuffer(payload, dtype=np.uint8).copy() if comm.Get_rank() == root else \
        np.empty(int(length[0]), dtype=np.uint8)
    _wait(comm.Ibcast(buffer, root=root), comm, root, timeout_s)
    return obj if comm.Get_rank() == root else pickle.loads(buffer.tobytes())  # noqa: S301 - our own ranks' bytes


def _wait(request, comm, root: int, timeout_s: float) -> None:
    import time
    deadline = time.monotonic() + timeout_s
    while not request.Test():
        if time.monotonic() > deadline:
            raise LaunchError(f"rank {comm.Get_rank()}: an MPI broadcast from rank {root} did not complete in "
                              f"{timeout_s:.0f} s (parallel.timeout_s): rank {root} or another rank is hung or dead")
        time.sleep(0.001)


def launch_info(timeout_s: float = 600.0) -> LaunchInfo:
    """Rank, world size, local rank and rendezvous of this process, from its launcher."""
    launcher = detect()
    if launcher == "torchrun":
        return LaunchInfo(launcher, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                          int(os.environ.get("LOCAL_RANK", 0)), "env://")
    if launcher in ("srun", "mpiexec"):
        return _mpi_rendezvous(launcher, timeout_s)
    return LaunchInfo("single", 0, 1, 0, f"tcp://127.0.0.1:{_free_port()}")


def split_mpi_comm(info: LaunchInfo, member: bool):
    """An MPI communicator of the ranks with `member` True (None for the others, and for launchers
    without MPI). Collective: every rank calls it."""
    if info.launcher not in ("srun", "mpiexec"):
        return None
    from mpi4py import MPI
    comm = MPI.COMM_WORLD.Split(color=1 if member else MPI.UNDEFINED, key=info.rank)
    return comm if member else None


def init_distributed(timeout_s: float = 600.0) -> LaunchInfo:
    """Initialise torch.distributed for this launcher (NCCL on GPUs, gloo on CPUs); keep freed host
    memory for reuse (harness/distributed/host_memory.py); leave the objects that exist by now (the
    imports') out of later garbage collections."""
    keep_freed_memory()
    # Megatron runs a full gc.collect() whenever its distributed optimizer describes its state for
    # a save, and its persistent writer after each save: 0.26 s here over the ~450k objects that
    # importing torch and Megatron creates, 2 us once they are frozen (they live as long as the
    # process anyway). Objects made later are collected as usual.
    if not gc.get_freeze_count():
        gc.freeze()
    info = launch_info(timeout_s)
    if dist.is_initialized():
        return info
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method=info.init_method, rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return info
