"""make_shards and verify_data under `mpiexec -n 2`: the ranks share the input tars and the shards,
the result is byte for byte the one-process result (duplicates across ranks included), and rank 0's
progress bar counts the images of both ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ingest_inputs import image_bytes, sample, write_tar
from launching import REPO, launch

from harness.data.format import read_manifest

MPIEXEC = Path(sys.executable).parent / "mpiexec"


def test_two_ranks_ingest_like_one_and_verify(tmp_path):
    for t in range(4):       # tar t goes to rank t % 2; tar 3 repeats an image of tar 0 and an id of tar 2
        members = [m for i in range(6)
                   for m in sample(f"{t}{i:03d}", image_bytes(32, 32, (40 * t, 40 * i, 9)), f"c {t} {i}")]
        if t == 3:
            members += sample("3900", image_bytes(32, 32, (0, 0, 9)), "copy of 0000")
            members += sample("2000", image_bytes(32, 32, (1, 1, 1)), "an id of tar 2")
        write_tar(tmp_path / f"{t:05d}.tar", members)
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    args = ["tools/make_shards.py", "--input", str(tmp_path / "*.tar"), "--resolution", "16", "32",
            "--samples-per-shard", "4"]
    if not MPIEXEC.exists():
        pytest.skip("mpiexec is not in the virtualenv (pip install mpich)")
    two = launch("mpiexec", 2, args + ["--out", str(tmp_path / "two")], env=env, timeout=120)
    one = subprocess.run([sys.executable] + args + ["--out", str(tmp_path / "one")], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=120)
    assert one.returncode == 0, one.stderr
    assert "on 2 rank(s)" in two.stdout and "26 records" in two.stdout
    assert "26/26" in two.stderr.replace(" ", "")                    # rank 0's bar: both ranks' images
    for r in (16, 32):
        assert read_manifest(tmp_path / "two" / str(r)) == read_manifest(tmp_path / "one" / str(r))
    assert (tmp_path / "two" / "ingest-report.json").read_text() == \
        (tmp_path / "one" / "ingest-report.json").read_text().replace(str(tmp_path / "one"), str(tmp_path / "two"))
    assert read_manifest(tmp_path / "two" / "16").num_samples == 24    # the repeated image and id are skipped

    verify = ["tools/verify_data.py", str(tmp_path / "two" / "16"), str(tmp_path / "two" / "32"), "--no-progress"]
    assert "ok" in launch("mpiexec", 2, verify, env=env, timeout=120).stdout
    bad = tmp_path / "two" / "32" / read_manifest(tmp_path / "two" / "32").shards[5].file
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    failed = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable] + verify, cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, **env}, timeout=120)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    bad_lines = [line for line in failed.stdout.splitlines() if line.startswith("BAD")]
    assert len(bad_lines) == 1 and bad_lines[0].startswith(f"BAD {bad}: sha256 ")
