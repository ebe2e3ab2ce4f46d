"""Launching multi-process tests: torchrun and mpiexec from this virtualenv, output kept on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def launch(kind: str, nprocs: int, args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python args...` under torchrun or mpiexec with nprocs processes; fail with its output."""
    if kind == "torchrun":
        cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nprocs}"] + args
    elif kind == "mpiexec":
        if not (BIN / "mpiexec").exists():
            pytest.skip("mpiexec is not in the virtualenv (pip install mpich)")
        cmd = [str(BIN / "mpiexec"), "-n", str(nprocs), sys.executable] + args
    else:
        raise ValueError(kind)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc
