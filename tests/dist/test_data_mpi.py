"""Two MPI ranks write one data set jointly, then read it with comm and dp=2: every sample once per epoch.

pytest launches this same file under `mpiexec -n 2` (the virtualenv's, next to sys.executable);
the ranks run `_main` below, all checks in one launch since each costs about a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec next to {sys.executable} (pip install mpich)")
def test_two_ranks_write_and_read(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, __file__, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("rank ok") == 2, result.stdout + result.stderr


def _main(tmp: Path) -> None:
    import numpy as np
    from mpi4py import MPI

    from harness.data.format import read_manifest
    from harness.data.reader import ShardedReader
    from harness.data.writer import write_dataset

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    assert comm.Get_size() == 2
    n = 50
    samples = [(np.full((8, 8, 3), i, np.uint8), f"caption {i}", f"s{i:03d}") for i in range(n)]

    # Joint write: rank r writes shards r, r + 2, ...; both get the manifest rank 0 wrote.
    manifest = write_dataset(samples, tmp / "ds", resolution_px=8, samples_per_shard=8, comm=comm, progress=False)
    assert manifest == read_manifest(tmp / "ds") and len(manifest.shards) == 7 and manifest.num_samples == n
    # The plain-iterable path (each rank walks the stream, keeps its shards) writes the same bytes.
    from_iter = write_dataset(iter(samples), tmp / "it", resolution_px=8, samples_per_shard=8, comm=comm,
                              progress=False)
    assert from_iter == manifest
    # A refusal on rank 0 reaches every rank, so none waits in a collective.
    try:
        write_dataset(samples, tmp / "ds", resolution_px=8, comm=comm, progress=False)
        raise AssertionError("overwrite was not refused")
    except FileExistsError as e:
        assert "pass --overwrite" in str(e)

    # Joint read: two epochs of 5 global batches of 10, rank r taking 5 of each.
    with ShardedReader(tmp / "ds", resolution_px=4, global_batch=10, dp_rank=rank, dp=2, comm=comm) as reader:
        mine = [reader.next_batch().ids for _ in range(10)]
    everyone = comm.gather(mine, root=0)
    if rank == 0:
        for epoch in range(2):
            ids = [i for batches in everyone for batch in batches[epoch * 5:(epoch + 1) * 5] for i in batch]
            assert sorted(ids) == [f"s{i:03d}" for i in range(n)], ids
        assert not set(everyone[0][0]) & set(everyone[1][0])
    comm.barrier()
    print("rank ok", flush=True)


if __name__ == "__main__":
    try:
        _main(Path(sys.argv[1]))
    except BaseException:
        import traceback

        from mpi4py import MPI

        traceback.print_exc()
        MPI.COMM_WORLD.Abort(1)  # a failed check on one rank must not leave the other waiting in a collective
