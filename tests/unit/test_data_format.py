"""HDF5 shard format v1, the manifest, and the data set writer (overwrite refusal, resume)."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch

from harness.data.format import (
    FORMAT_VERSION,
    Manifest,
    ShardInfo,
    file_digest,
    file_sha256,
    read_manifest,
    write_manifest,
    write_shard,
)
from harness.data.reader import ShardedReader, to_model_range
from harness.data.writer import write_dataset

CAPTIONS = ["a dodo", "Ünïcödé café – naïve façade ✓ 東京", "🦤 emoji", ""]


def _images(n: int, px: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def _samples(n: int, px: int = 8) -> list[tuple[np.ndarray, str, str]]:
    """Sample i: an image filled with i, caption `caption {i}`, id `s{i:03d}`."""
    return [(np.full((px, px, 3), i, np.uint8), f"caption {i} ✓", f"s{i:03d}") for i in range(n)]


@pytest.mark.parametrize("compression", [None, "lzf", "gzip", "blosc-lz4"])
def test_shard_round_trip(tmp_path, compression):
    images = _images(4)
    text_emb = np.random.default_rng(1).standard_normal((4, 5, 6)).astype(np.float16)
    text_len = np.array([5, 1, 3, 2], np.int32)
    info = write_shard(tmp_path / "shard-00000.h5", images, CAPTIONS, ["a", "b", "ç", "d"], text_emb=text_emb,
                       text_len=text_len, compression=compression, attrs={"source": "test"})
    path = tmp_path / "shard-00000.h5"
    assert info == ShardInfo(file="shard-00000.h5", num_samples=4, sha256=file_sha256(path))
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.h5"]  # no temporary left behind
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION and f.attrs["source"] == "test"
        assert f["images"].dtype == np.uint8 and f["images"].chunks == (1, 8, 8, 3)
        np.testing.assert_array_equal(f["images"][:], images)
        assert list(f["captions"].asstr()[:]) == CAPTIONS
        assert list(f["ids"].asstr()[:]) == ["a", "b", "ç", "d"]
        np.testing.assert_array_equal(f["text_emb"][:], text_emb)
        assert f["text_emb"].dtype == np.float16 and f["text_len"].dtype == np.int32
        np.testing.assert_array_equal(f["text_len"][:], text_len)

    # The same shard through a manifest and the reader.
    write_manifest(tmp_path, Manifest(format_version=1, resolution_px=8, num_samples=4, shards=(info,),
                                      compression=compression,
                                      text_embedding={"model": "test", "dim": 6, "max_len": 5}))
    with ShardedReader(tmp_path, resolution_px=8, global_batch=1) as reader:
        batch = reader.read([3, 0, 2, 0])
    assert batch.ids == ["d", "a", "ç", "a"] and batch.captions == [CAPTIONS[i] for i in (3, 0, 2, 0)]
    np.testing.assert_array_equal(batch.images.numpy(), images[[3, 0, 2, 0]].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(batch.text_emb.numpy(), text_emb[[3, 0, 2, 0]])
    assert batch.text_len.dtype == torch.int64 and batch.text_len.tolist() == [2, 5, 3, 5]
    assert batch.text_emb.dtype == torch.float16 and batch.images.dtype == torch.uint8


def test_write_shard_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_shard(tmp_path / "s.h5", _images(2).astype(np.float32), ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        write_shard(tmp_path / "s.h5", _images(2), ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="compression"):
        write_shard(tmp_path / "s.h5", _images(2), ["a", "b"], ["a", "b"], compression="zip")


def _manifest_dict(tmp_path) -> dict:
    info = write_shard(tmp_path / "shard-00000.h5", _images(2), ["a", "b"], ["a", "b"])
    write_manifest(tmp_path, Manifest(format_version=1, resolution_px=8, num_samples=2, shards=(info,)))
    return json.loads((tmp_path / "manifest.json").read_text())


def test_manifest_round_trip(tmp_path):
    m = Manifest(format_version=1, resolution_px=256, num_samples=3,
                 shards=(ShardInfo("shard-00000.h5", 2, "ab" * 32), ShardInfo("shard-00001.h5", 1, "cd" * 32)),
                 source="émoji", compression="blosc-lz4", text_embedding={"model": "m", "dim": 4, "max_len": 7})
    write_manifest(tmp_path, m)
    assert read_manifest(tmp_path) == m
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("resolution_px"), "missing key 'resolution_px'"),
    (lambda d: d.pop("format_version"), "missing key 'format_version'"),
    (lambda d: d.update(format_version=2), "key 'format_version' is 2"),
    (lambda d: d["shards"][0].pop("sha256"), r"shards\[0\]: missing key 'sha256'"),
    (lambda d: d.update(num_samples="2"), "key 'num_samples' has type str"),
    (lambda d: d.update(num_samples=3), "key 'num_samples' is 3 but the shards hold 2"),
    (lambda d: d.update(colour="red"), "unknown key 'colour'"),
    (lambda d: d.update(compression="zip"), "key 'compression'"),
    (lambda d: d.update(text_embedding={"model": "m", "dim": 4}), "missing key 'max_len'"),
])
def test_manifest_errors_name_file_and_key(tmp_path, edit, message):
    d = _manifest_dict(tmp_path)
    edit(d)
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message) as e:
        read_manifest(tmp_path)
    assert str(tmp_path / "manifest.json") in str(e.value) and "\n" not in str(e.value)


def test_manifest_missing_or_not_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json: no manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        read_manifest(tmp_path)


def test_write_dataset_layout_and_refuses_overwrite(tmp_path):
    out = tmp_path / "ds"
    m = write_dataset(_samples(10), out, resolution_px=8, samples_per_shard=4, progress=False)
    assert m == read_manifest(out)
    assert [s.num_samples for s in m.shards] == [4, 4, 2] and m.num_samples == 10 and m.compression == "blosc-lz4"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.h5", "shard-00001.h5",
                                                     "shard-00002.h5"]
    with pytest.raises(FileExistsError, match=f"{out}: a data set exists here.*pass --overwrite"):
        write_dataset(_samples(10), out, resolution_px=8, progress=False)
    m2 = write_dataset(_samples(3), out, resolution_px=8, samples_per_shard=4, overwrite=True, progress=False)
    assert m2.num_samples == 3 and sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.h5"]


def test_write_dataset_checks_samples(tmp_path):
    bad = _samples(3) + [(np.zeros((4, 4, 3), np.uint8), "small", "s003")]
    with pytest.raises(ValueError, match=r"sample 3 \(id 's003'\): image must be uint8 \[8, 8, 3\]"):
        write_dataset(bad, tmp_path, resolution_px=8, progress=False)


class _FailingAt(list):
    """A list of samples whose item `fail_at` raises, like a crash in the middle of a write."""

    def __init__(self, samples, fail_at):
        super().__init__(samples)
        self.fail_at = fail_at

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError("interrupted")
        return super().__getitem__(i)


def test_write_dataset_resumes_keeping_completed_shards(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="interrupted"):
        write_dataset(_FailingAt(_samples(10), 9), out, resolution_px=8, samples_per_shard=4, progress=False)
    assert not (out / "manifest.json").exists()
    # An old, known mtime: a rewrite within the file system's timestamp granularity cannot hide.
    os.utime(out / "shard-00000.h5", ns=(10**18, 10**18))
    # A shard that no longer matches its journal entry is rewritten, not trusted.
    with open(out / "shard-00001.h5", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    m = write_dataset(_samples(10), out, resolution_px=8, samples_per_shard=4, progress=False)
    assert (out / "shard-00000.h5").stat().st_mtime_ns == 10**18
    fresh = write_dataset(_samples(10), tmp_path / "fresh", resolution_px=8, samples_per_shard=4, progress=False)
    assert m == fresh  # same bytes as an uninterrupted write, so shard 1 was rewritten
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.h5", "shard-00001.h5",
                                                     "shard-00002.h5"]


def test_write_dataset_from_a_generator(tmp_path):
    as_list = write_dataset(_samples(9), tmp_path / "a", resolution_px=8, samples_per_shard=4, progress=False)
    as_gen = write_dataset(iter(_samples(9)), tmp_path / "b", resolution_px=8, samples_per_shard=4, progress=False)
    assert as_list == as_gen


def test_file_digest_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    data = os.urandom((1 << 22) + 17)    # more than one read block
    path.write_bytes(data)
    blocks = []
    assert file_digest(path, "sha1") == hashlib.sha1(data).hexdigest()
    assert file_sha256(path, blocks.append) == hashlib.sha256(data).hexdigest()
    assert sum(blocks) == len(data) and len(blocks) == 2


def test_to_model_range_maps_0_255_to_minus1_1():
    x = to_model_range(torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32
    expected = torch.tensor([0, 1, 127, 128, 255], dtype=torch.float64) * 2 / 255 - 1
    assert torch.allclose(x.double(), expected, atol=1e-6) and x[0] == -1 and x[-1] == 1
