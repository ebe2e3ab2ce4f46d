"""When one rank dies or hangs, every rank ends promptly, and the message names the rank.

- Each rank records the last step it finished in torch.distributed's rendezvous store
  (`harness/progress/<rank>`, a TCP server hosted by rank 0).
- A collective that times out (`parallel.timeout_s`) raises on every rank still alive: they all
  wait for the same missing peer. Each of them reports the timeout in the store
  (`harness/timeout/<rank>`), waits a grace period for the others to do the same, and names the
  ranks that never reported: those are hung or dead (with the last step each finished).
- Under mpiexec and srun the process ends with MPI_Abort: a rank that returned from an error
  would otherwise wait in MPI_Finalize for a peer that never comes (seen: minutes). torchrun
  already tears the other ranks down when one exits with an error.
"""

from __future__ import annotations

import datetime
import sys
import time

import torch.distributed as dist

KEY = "harness/progress/{}"
TIMED_OUT = "harness/timeout/{}"


def _store():
    return dist.distributed_c10d._get_default_store() if dist.is_initialized() else None


def mark_progress(step: int) -> None:
    """Record that this rank finished `step` (cheap: one small message to the store)."""
    store = _store()
    if store is not None and dist.get_world_size() > 1:
        store.set(KEY.format(dist.get_rank()), str(step))


def unresponsive(grace_s: float = 15.0) -> str:
    """After a collective timed out: the ranks that did not report the same timeout within
    `grace_s`, named with the last step each finished; '' when that cannot be told."""
    store = _store()
    if store is None:
        return ""
    try:
        store.set_timeout(datetime.timedelta(seconds=grace_s))
        store.set(TIMED_OUT.format(dist.get_rank()), "1")
        world = dist.get_world_size()
        deadline = time.monotonic() + grace_s
        while True:
            silent = [r for r in range(world) if not store.check([TIMED_OUT.format(r)])]
            if not silent or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        steps = {r: store.get(KEY.format(r)).decode() if store.check([KEY.format(r)]) else "none" for r in silent}
    except Exception:  # noqa: BLE001 - the store's host (rank 0) may be the one that is gone
        return "the rendezvous store (hosted by rank 0) does not answer: rank 0 is hung or dead"
    if not silent:
        return ""
    return ", ".join(f"rank {r} (last finished step {steps[r]})" for r in silent) + \
        " did not answer: hung or dead"


def is_timeout(error: BaseException) -> bool:
    """Whether an exception is a collective that timed out (gloo, NCCL, the store)."""
    text = str(error).lower()
    return isinstance(error, (RuntimeError, dist.DistBackendError)) and ("timed out" in text or "timeout" in text)


def fail(error: BaseException, launcher: str, rank: int) -> None:
    """Print one line for this rank's error (naming a laggard on a timeout) and, under an MPI
    launcher, abort the whole MPI world."""
    message = " ".join(str(error).split())[:500] or type(error).__name__
    if is_timeout(error):
        who = unresponsive()
        message = f"a collective timed out ({message})" + (f"; {who}" if who else "")
    print(f"rank {rank}: error: {message}", file=sys.stderr, flush=True)
    if launcher in ("srun", "mpiexec"):
        from mpi4py import MPI
        MPI.COMM_WORLD.Abort(1)
