"""The real local Slurm cluster (slurm/local_cluster.sh) for tests/slurm: brought up once per session,
taken down at the end if this session started it. Skipped only where Slurm cannot be installed."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time

import pytest
from slurmjobs import REPO

LOCAL_CLUSTER = REPO / "slurm" / "local_cluster.sh"


def _cluster_up() -> bool:
    if not shutil.which("scontrol"):
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    return "is UP" in ping.stdout


def _mapped_paths() -> set[str]:
    """Files under /dev/shm that some live process has mapped."""
    mapped = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                mapped.update(line.split()[-1] for line in f if "/dev/shm/" in line)
        except OSError:
            pass
    return mapped


@pytest.fixture(scope="session")
def cluster():
    """A one-node Slurm with partitions debug (default) and high (preempts debug, REQUEUE)."""
    started = not _cluster_up()
    if started:
        proc = subprocess.run(["bash", str(LOCAL_CLUSTER), "up"], capture_output=True, text=True, timeout=900,
                              check=False)
        print(proc.stdout)
        if proc.returncode == 3:
            pytest.skip(f"Slurm cannot be installed here: {proc.stdout.strip().splitlines()[-1]}")
        assert proc.returncode == 0, f"local_cluster.sh up failed:\n{proc.stdout}\n{proc.stderr}"
    shm_before = set(glob.glob("/dev/shm/mpich_shm_*"))
    yield
    # MPICH ranks killed by a requeue or a preemption leave their start-up segment behind; remove the
    # ones that appeared during these tests and that no live process maps.
    mapped = _mapped_paths()
    for path in set(glob.glob("/dev/shm/mpich_shm_*")) - shm_before - mapped:
        if time.time() - os.stat(path).st_mtime > 10:      # not one being set up right now
            os.unlink(path)
    if started:
        subprocess.run(["bash", str(LOCAL_CLUSTER), "down"], capture_output=True, timeout=120, check=False)
