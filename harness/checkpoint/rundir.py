"""The run directory: the writability check of the sbatch pre-flight, and the lock of a job writing it.

No torch imports here: tools/check_config.py uses this before any rank starts.

A job holds `run_dir/.lock` (JSON: host, pid, the process's start time, Slurm job id and restart
count) from before it reads `latest` until it exits, and refreshes the file's mtime every
HEARTBEAT_S seconds. A second job refuses with one line naming the holder. A lock is stale, and is
taken over with a message, when its holder is

- on this host and its process is gone (or the pid now belongs to another process),
- an earlier run of the same Slurm job (a requeued job restarts only after every process of the
  previous run ended), or
- silent: no heartbeat for STALE_AFTER_S seconds (a holder on another node that died).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import psutil

LOCK_FILE = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class RunDirLocked(RuntimeError):
    """Another job holds the run directory; the message names it."""


def unwritable_reason(run_dir: Path) -> str | None:
    """None if run_dir exists (or was created) and takes a file; else why not."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None


def _this_holder() -> dict:
    env = os.environ
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time(),
            "slurm_job": env.get("SLURM_JOB_ID", ""), "slurm_restart": int(env.get("SLURM_RESTART_COUNT", 0) or 0),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def describe(holder: dict) -> str:
    job = f", Slurm job {holder['slurm_job']} (restart {holder['slurm_restart']})" if holder.get("slurm_job") else ""
    return f"{holder.get('host', '?')} pid {holder.get('pid', '?')}{job}, since {holder.get('since', '?')}"


def stale_reason(holder: dict, age_s: float, me: dict) -> str | None:
    """Why a lock held by `holder` (last heartbeat `age_s` ago) may be taken over by `me`, or None."""
    if holder.get("host") == me["host"]:
        try:
            alive = abs(psutil.Process(holder["pid"]).create_time() - holder["pid_started"]) < 1.0
        except (psutil.NoSuchProcess, KeyError, TypeError):
            alive = False
        if not alive:
            return "its process is gone"
    if me["slurm_job"] and holder.get("slurm_job") == me["slurm_job"] and \
            holder.get("slurm_restart", 0) < me["slurm_restart"]:
        return "it is an earlier run of this requeued Slurm job"
    if age_s > STALE_AFTER_S:
        return f"its last heartbeat is {age_s:.0f} s old"
    return None


class RunLock:
    """The lock of one run directory, held by this process (call `acquire` on one rank only)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.me = _this_holder()
        self.lost: str | None = None       # set by the heartbeat if another job took the lock over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns a message when a stale lock was taken over. Raises RunDirLocked."""
        note = None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, age = self._read()
                if holder is None:                 # being written, or removed just now: look again
                    time.sleep(0.2)
                    continue
                why = stale_reason(holder, age, self.me)
                if why is None:
                    raise RunDirLocked(f"{self.path.parent}: in use by {describe(holder)} (lock {self.path}); "
                                       "wait for that job, or stop it, before starting another") from None
                note = f"{self.path.parent}: took over the lock of {describe(holder)}: {why}"
                self._write_over()
                if self._read()[0] == self.me:      # two jobs taking over at once: the last writer wins
                    break
                raise RunDirLocked(f"{self.path.parent}: another job took the stale lock at the same time") from None
            else:
                with os.fdopen(fd, "w") as f:
                    json.dump(self.me, f)
                break
        else:
            raise RunDirLocked(f"{self.path}: cannot be read or created")
        self._thread = threading.Thread(target=self._beat, name="run-dir-lock", daemon=True)
        self._thread.start()
        return note

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._read()[0] == self.me:
                self.path.unlink(missing_ok=True)

    def _read(self) -> tuple[dict | None, float]:
        try:
            text, mtime = self.path.read_text(), self.path.stat().st_mtime
            return json.loads(text), time.time() - mtime
        except (OSError, ValueError):
            return None, 0.0

    def _write_over(self) -> None:
        tmp = self.path.with_name(f"{LOCK_FILE}.{self.me['host']}.{self.me['pid']}")
        tmp.write_text(json.dumps(self.me))
        os.replace(tmp, self.path)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            holder, _ = self._read()
            if holder != self.me:
                self.lost = f"{self.path}: now held by {describe(holder) if holder else 'nobody'}"
                return
            try:
                os.utime(self.path)
            except OSError:
                pass
