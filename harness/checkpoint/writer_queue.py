"""The results queue of Megatron-core's torch_dist shard writers, started by the harness.

Megatron-core 0.16.1's writers (processes forked for each save) report through a queue served by a
multiprocessing Manager, which Megatron starts with the "spawn" method on a process's first save
(`filesystem_async._get_write_results_queue`). A spawned process imports the launching script
again, and with it torch and Megatron: 5.5 s of every grow, reshard and first training save,
measured on 2 CPU cores. `start()` installs a forked Manager's queue instead, before that first save.

The Manager outlives every save, so it is made to behave like part of its parent:
- it ignores SIGTERM and SIGUSR1: Slurm signals every process of a job step at preemption or near
  the time limit, and the trainer then writes one more checkpoint through this queue (a Manager
  killed by that signal fails the save with BrokenPipeError);
- it dies with its parent (Linux `PR_SET_PDEATHSIG`): a rank killed with SIGKILL, or by the OOM
  killer, leaves no orphan behind.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from multiprocessing.managers import SyncManager

from megatron.core.dist_checkpointing.strategies import filesystem_async

PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def _as_part_of_parent(parent: int) -> None:
    """The Manager process's initializer (it already ignores SIGINT: multiprocessing's own rule)."""
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:          # the parent died before the death signal was armed
        os._exit(0)


def start() -> None:
    """Serve Megatron's writer results queue from a forked Manager, once per process."""
    if filesystem_async._results_queue is None:
        manager = SyncManager(ctx=multiprocessing.get_context("fork"))
        manager.start(_as_part_of_parent, (os.getpid(),))
        filesystem_async._results_queue = manager.Queue()   # the queue's proxy keeps the manager alive
