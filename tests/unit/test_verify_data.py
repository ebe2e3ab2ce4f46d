"""harness.data.verify and tools/verify_data.py: checksums, layout and a decode of random samples per shard."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from harness.data.format import file_sha256, read_manifest, write_manifest
from harness.data.verify import verify_shards
from harness.data.writer import write_dataset

REPO = Path(__file__).resolve().parents[2]


def _dataset(root: Path) -> Path:
    samples = [(np.full((16, 16, 3), 20 * i, np.uint8), f"c{i}", f"s{i}") for i in range(12)]  # compressible
    write_dataset(samples, root, resolution_px=16, samples_per_shard=4, progress=False)
    return root


def _zero_chunk(path: Path, sample: int) -> None:
    """Overwrite the stored (compressed) bytes of one image with zeros, as a bad disk block would."""
    with h5py.File(path, "r") as f:
        chunk = f["images"].id.get_chunk_info(sample)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset)
        f.write(bytes(chunk.size))


def _rehash(root: Path) -> None:
    """Make the manifest's checksums those of the files (a shard written corrupt in the first place)."""
    m = read_manifest(root)
    write_manifest(root, dataclasses.replace(m, shards=tuple(dataclasses.replace(s, sha256=file_sha256(root / s.file))
                                                           for s in m.shards)))


def test_good_data_set_and_the_ranks_split_the_shards(tmp_path):
    root = _dataset(tmp_path / "ds")
    assert verify_shards(root) == [] and verify_shards(root, 1, 2) == []
    (root / "shard-00002.h5").unlink()
    assert verify_shards(root, 0, 2) == [f"{root / 'shard-00002.h5'}: missing"]
    assert verify_shards(root, 1, 2) == []                    # rank 1 of 2 checks shard 1 only


def test_checksum_layout_and_decode_problems_name_the_shard(tmp_path):
    root = _dataset(tmp_path / "ds")
    _zero_chunk(root / "shard-00001.h5", 2)
    (line,) = verify_shards(root)
    assert line.startswith(f"{root / 'shard-00001.h5'}: sha256 ") and "is not the manifest's" in line
    _rehash(root)                                             # the checksum matches, the sample does not decode
    (line,) = verify_shards(root, samples=4)
    assert line.startswith(f"{root / 'shard-00001.h5'}: sample 2 does not decode")
    shutil.rmtree(root)
    root = _dataset(root)
    with h5py.File(root / "shard-00000.h5", "r+") as f:
        del f["ids"]
        f.create_dataset("ids", data=np.arange(4))
    _rehash(root)
    (line,) = verify_shards(root)
    assert line == f"{root / 'shard-00000.h5'}: dataset ids is int64, the format stores UTF-8 strings"


def test_verify_data_cli_exit_status(tmp_path):
    root = _dataset(tmp_path / "ds")
    ok = subprocess.run([sys.executable, "tools/verify_data.py", str(root), "--no-progress"], cwd=REPO,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith(f"{root}: ok"), ok.stderr
    (root / "shard-00001.h5").write_bytes(b"gone")
    bad = subprocess.run([sys.executable, "tools/verify_data.py", str(root), str(tmp_path / "none"), "--no-progress"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [f"BAD {root / 'shard-00001.h5'}: sha256 "
                                       f"{file_sha256(root / 'shard-00001.h5')[:12]}… is not the manifest's "
                                       f"{read_manifest(root).shards[1].sha256[:12]}…",
                                       f"{root}: 1 bad shard(s)" + bad.stdout.splitlines()[1].split("shard(s)")[1],
                                       f"BAD {tmp_path / 'none' / 'manifest.json'}: no manifest; not a data set "
                                       f"(write one with tools/make_shards.py)"]
