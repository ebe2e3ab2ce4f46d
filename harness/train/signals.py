"""Stop requests from the scheduler: checkpoint, and under Slurm requeue.

- SIGUSR1: the time limit is near (`sbatch --signal=USR1@<seconds>`; Slurm may send it up to 60 s
  early). Finish the step, checkpoint, `scontrol requeue` the job (if `train.requeue`), exit.
- SIGTERM: preemption or scancel (Slurm 22.05 preempts with SIGTERM, then SIGKILL after KillWait).
  Finish the step, checkpoint at once and exit; a preempting partition requeues the job itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


class StopSignals:
    """Records the first stop signal; the loop polls `received` between steps (handlers do no I/O)."""

    HANDLED = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.HANDLED}

    def _handle(self, signum, frame) -> None:
        if self.received != "SIGTERM":            # SIGTERM (no time left) outranks SIGUSR1
            self.received = signal.Signals(signum).name

    def restore(self) -> None:
        """Put back the handlers that were installed before."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def requeue_slurm_job() -> str:
    """Ask Slurm to requeue this job (it restarts with SLURM_RESTART_COUNT + 1); returns what happened."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return "not a Slurm job: not requeued"
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode:
        print(f"scontrol requeue {job} failed: {result.stderr.strip()}", file=sys.stderr, flush=True)
        return f"requeue of job {job} failed"
    return f"job {job} requeued"
