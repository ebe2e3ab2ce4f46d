"""The data tools on real files: an image folder + CSV, and the demo data (fetched npm package) when present."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data.reader import ShardedReader

REPO = Path(__file__).resolve().parents[2]
RAW = REPO / "data" / "raw"

needs_demo_data = pytest.mark.skipif(not (RAW / "fluent-emoji-3d").is_dir(),
                                     reason="demo data not fetched: run tools/fetch_demo_data.py --out data/raw")


def _tool(name: str):
    """Import tools/<name>.py (tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_demo_data
def test_fetch_counts_and_split():
    fetch = _tool("fetch_demo_data")
    counts = fetch.main(["--out", str(RAW)])  # already extracted: only rewrites metadata.jsonl
    rows = [json.loads(line) for line in (RAW / "fluent-emoji-3d" / "metadata.jsonl").open(encoding="utf-8")]
    assert counts["named"] == len(rows) and 3300 <= len(rows) <= 3400  # 3,388 with emoji 2.16
    assert all((RAW / "fluent-emoji-3d" / r["file"]).is_file() for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    heldout = [r for r in rows if r["split"] == "heldout"]
    assert 0.07 <= len(heldout) / len(rows) <= 0.13
    sides = {}
    for r in rows:
        sides.setdefault(fetch.base_concept(r["caption"]), set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values()), "a concept is on both sides of the split"
    assert fetch.base_concept("man light skin tone red hair") == "man red hair"
    assert fetch.caption_of("1f9a4") == "dodo"


@needs_demo_data
def test_make_shards_heldout(tmp_path):
    out = tmp_path / "heldout"
    metadata = RAW / "fluent-emoji-3d" / "metadata.jsonl"
    manifest = _tool("make_shards").main(["--images-root", str(RAW / "fluent-emoji-3d"), "--captions", str(metadata),
                                          "--split", "heldout", "--out", str(out), "--resolution", "64",
                                          "--samples-per-shard", "128", "--compression", "none"]).manifests[64]
    rows = {r["id"]: r for line in metadata.open(encoding="utf-8") if (r := json.loads(line))["split"] == "heldout"}
    assert manifest.num_samples == len(rows) and manifest.resolution_px == 64 and manifest.compression is None
    with ShardedReader(out, resolution_px=32, global_batch=16) as reader:
        batch = reader.next_batch()
    assert batch.images.shape == (16, 3, 32, 32)
    assert all(rows[i]["caption"] == c for i, c in zip(batch.ids, batch.captions))
    # Emoji on a white background: the corners are white, the centre is not.
    assert (batch.images[:, :, 0, 0] == 255).all() and (batch.images[:, :, 12:20, 12:20] < 250).any()


def test_make_shards_from_a_csv(tmp_path):
    # 60x30 RGBA: a transparent left third, an opaque red middle third, a half-transparent blue right third.
    rgba = np.zeros((30, 60, 4), np.uint8)
    rgba[:, 20:40] = (255, 0, 0, 255)
    rgba[:, 40:] = (0, 0, 255, 128)
    (tmp_path / "img" / "sub").mkdir(parents=True)
    Image.fromarray(rgba).save(tmp_path / "img" / "sub" / "a.png")
    Image.fromarray(rgba[:, ::-1].copy()).save(tmp_path / "img" / "b.png")
    (tmp_path / "captions.csv").write_text('file,caption\nsub/a.png,"red, then blue"\nb.png,café\n', encoding="utf-8")
    manifest = _tool("make_shards").main(["--images-root", str(tmp_path / "img"), "--captions",
                                          str(tmp_path / "captions.csv"), "--out", str(tmp_path / "ds"),
                                          "--resolution", "10", "--compression", "gzip"]).manifests[10]
    assert manifest.num_samples == 2 and manifest.compression == "gzip"
    with ShardedReader(tmp_path / "ds", resolution_px=10, global_batch=1) as reader:
        batch = reader.read([0, 1])
    assert batch.ids == ["sub/a", "b"] and batch.captions == ["red, then blue", "café"]
    # The centre crop (columns 15..44) shrunk 3x by area, pixel k = columns 15+3k..17+3k:
    # white | 2 white + 1 red | red x6 | 1 red + 2 half blue on white | half blue on white.
    row = batch.images[0, :, 5].T.tolist()  # (10 px, RGB) along the middle row
    assert row == [[255, 255, 255], [255, 170, 170]] + [[255, 0, 0]] * 6 + [[170, 85, 170], [127, 127, 255]]
    assert batch.images[1, :, 5].T.tolist() == row[::-1]
