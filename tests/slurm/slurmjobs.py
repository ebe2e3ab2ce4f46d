"""Submitting to and watching the local Slurm cluster from tests (sbatch, scontrol, scancel)."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
# Jobs inherit the submitting environment: one thread per task on this 2-core machine.
JOB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(cmd: list[str], env: dict | None = None, timeout: float = 60) -> str:
    """Run a command from the repository root; its stdout, or an AssertionError with its output."""
    proc = subprocess.run(cmd, cwd=REPO, env={**JOB_ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def sbatch(*args, env: dict | None = None) -> str:
    """Submit a batch script (options and arguments as for sbatch); the job id."""
    return run(["sbatch", "--parsable", *map(str, args)], env).strip().split(";")[0]


def job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay visible: MinJobAge=3600 on the local cluster)."""
    out = run(["scontrol", "show", "job", "-o", job_id])
    return dict(re.findall(r"(\w+)=(\S*)", out))


def when(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp)


def wait_until(predicate, timeout: float, what: str, poll_s: float = 0.25):
    """Poll until predicate() is truthy; its value, or an AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_done(job_ids: list[str], timeout: float, outputs: Path | None = None) -> list[dict]:
    """Wait for every job to reach a terminal state; their scontrol records (job output tails on timeout)."""
    try:
        wait_until(lambda: all(job(j)["JobState"] in TERMINAL for j in job_ids), timeout,
                   f"jobs {job_ids} to finish", poll_s=0.5)
    except AssertionError as e:
        states = {j: (job(j)["JobState"], job(j).get("Reason")) for j in job_ids}
        tails = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(outputs.glob("*.out"))) \
            if outputs else ""
        raise AssertionError(f"{e}: {states}{tails}") from None
    return [job(j) for j in job_ids]


def cancel(job_ids: list[str]) -> None:
    """scancel the jobs that are still queued or running (test clean-up)."""
    live = [j for j in job_ids if job(j)["JobState"] not in TERMINAL]
    if live:
        subprocess.run(["scancel", *live], capture_output=True, check=False)


def useful_lines(text: str) -> list[str]:
    """The harness's own job output, without library warnings or srun's step messages (these are written
    by another process, so their order against the harness's last line is not fixed)."""
    noise = ("warn", "Warning", "if hasattr", "RerunStateMachine", "Implicit initialization", "load_state_dict")
    return [line for line in text.splitlines()
            if not any(n in line for n in noise) and not line.startswith("srun: ")]
