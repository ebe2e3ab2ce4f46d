"""MPI for the data tools (make_shards, embed_captions, verify_data): the communicator, collectives
that carry a failure to every rank, and a progress bar on rank 0 that counts the work of all ranks.

Every rank runs the same code on its own share of the inputs; with ``comm=None`` (one process) the
helpers reduce to plain calls, so the tools run the same without MPI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
_PROGRESS_TAG = 7301  # point-to-point tag of RankProgress messages (collectives use their own context)


def mpi_comm():
    """COMM_WORLD when launched by an MPI launcher with more than one rank, else None (mpi4py is
    imported only then, so a plain `python tools/x.py` never initialises MPI)."""
    if not any(k in os.environ for k in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")):
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def rank_and_size(comm) -> tuple[int, int]:
    return (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)


def on_root(comm, fn: Callable[[], T]) -> T:
    """Rank 0 runs `fn`; every rank returns its result, or raises its exception (so none waits in a
    collective for a rank that failed)."""
    if comm is None:
        return fn()
    result, error = None, None
    if comm.Get_rank() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            error = e
    result, error = comm.bcast((result, error), root=0)
    if error is not None:
        raise error
    return result


def on_all(comm, fn: Callable[[], T]) -> list[T] | None:
    """Every rank runs `fn`; rank 0 returns the list of results in rank order, the others None. If
    any rank raised, every rank raises: its own exception (with its traceback), else the first."""
    if comm is None:
        return [fn()]
    result, mine = None, None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - re-raised on every rank below
        mine = e
    gathered = comm.gather((result, mine), root=0)
    first = next((e for _, e in gathered if e is not None), None) if gathered is not None else None
    first = comm.bcast(first, root=0)
    if mine is not None:
        raise mine
    if first is not None:
        raise first
    return [r for r, _ in gathered] if gathered is not None else None


class RankProgress:
    """A tqdm bar on rank 0 whose count (and so its rate) is the sum over all ranks.

    Other ranks send their counts to rank 0 at most every `interval` seconds; rank 0 collects them
    whenever it updates its own count, and in `close` until every rank has closed. Use it as a
    context manager on every rank, so that a rank that fails still closes its bar."""

    def __init__(self, comm, total: int | None = None, *, desc: str, unit: str = "img", unit_scale: bool = False,
                 enabled: bool = True, interval: float = 0.5):
        self.comm, self.interval = comm, interval
        self.rank, self.size = rank_and_size(comm)
        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=not enabled,
                        dynamic_ncols=True) if self.rank == 0 else None
        self._pending, self._last, self._requests, self._closed = 0, time.monotonic(), [], 0

    def update(self, n: int = 1) -> None:
        if self.rank == 0:
            self.bar.update(n)
            self._collect(block=False)
            return
        self._pending += n
        if time.monotonic() - self._last >= self.interval:
            self._send(done=False)

    def write(self, message: str) -> None:
        """Print a line above the bar (rank 0 only)."""
        if self.rank == 0:
            self.bar.write(message)

    def close(self) -> None:
        if self.rank == 0:
            self._collect(block=True)
            self.bar.close()
        else:
            self._send(done=True)
            from mpi4py import MPI

            MPI.Request.waitall(self._requests)

    def __enter__(self) -> RankProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, done: bool) -> None:
        self._requests = [r for r in self._requests if not r.Test()]
        self._requests.append(self.comm.isend((self._pending, done), dest=0, tag=_PROGRESS_TAG))
        self._pending, self._last = 0, time.monotonic()

    def _collect(self, block: bool) -> None:
        if self.comm is None:
            return
        from mpi4py import MPI

        while (block and self._closed < self.size - 1) or self.comm.iprobe(source=MPI.ANY_SOURCE, tag=_PROGRESS_TAG):
            n, done = self.comm.recv(source=MPI.ANY_SOURCE, tag=_PROGRESS_TAG)
            self.bar.update(n)
            self._closed += done
