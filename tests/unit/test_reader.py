"""ShardedReader: the global stream, data-parallel slices, resume, down-sampling and bad files."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from harness.data.reader import (
    ShardedReader,
    area_downsample,
    epoch_permutation,
    rank_positions,
)
from harness.data.writer import write_dataset

N = 37  # not a multiple of any batch size below, so global batches straddle epochs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """37 samples at 8 px in shards of 10; sample i is an image filled with i, id `s{i:03d}`."""
    root = tmp_path_factory.mktemp("ds")
    samples = [(np.full((8, 8, 3), i, np.uint8), f"caption {i}", f"s{i:03d}") for i in range(N)]
    write_dataset(samples, root, resolution_px=8, samples_per_shard=10, progress=False)
    return root


def _stream(root, dp: int, global_batch: int, batches: int, consumed: int = 0, seed: int = 0) -> dict[int, str]:
    """Stream position -> id, from `dp` readers (one per rank) running `batches` global batches."""
    seen = {}
    readers = [ShardedReader(root, resolution_px=8, global_batch=global_batch, dp_rank=r, dp=dp, seed=seed,
                             consumed_samples=consumed) for r in range(dp)]
    for _ in range(batches):
        for rank, reader in enumerate(readers):
            positions = rank_positions(reader.consumed_samples, global_batch, rank, dp)
            batch = reader.next_batch()
            assert batch.images.shape == (global_batch // dp, 3, 8, 8) and batch.images.dtype == torch.uint8
            # The pixels belong to the id: sample i is filled with i.
            assert [int(im[0, 0, 0]) for im in batch.images] == [int(i[1:]) for i in batch.ids]
            seen.update(zip(positions, batch.ids))
    for reader in readers:
        assert reader.consumed_samples == consumed + batches * global_batch
        reader.close()
    return seen


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_every_sample_once_per_epoch_across_ranks(dataset, dp):
    seen = _stream(dataset, dp, global_batch=8, batches=10)  # 80 positions: two full epochs and a bit
    assert sorted(seen) == list(range(80))
    for epoch in range(2):
        ids = [seen[p] for p in range(epoch * N, (epoch + 1) * N)]
        assert sorted(ids) == [f"s{i:03d}" for i in range(N)]
        assert ids == [f"s{i:03d}" for i in epoch_permutation(N, 0, epoch)]
    assert [seen[p] for p in range(N)] != [seen[p] for p in range(N, 2 * N)]  # epochs are reshuffled


def test_resume_with_different_dp_continues_the_same_stream(dataset):
    uninterrupted = _stream(dataset, dp=1, global_batch=8, batches=9)
    first = _stream(dataset, dp=2, global_batch=8, batches=4)
    resumed = _stream(dataset, dp=1, global_batch=8, batches=5, consumed=4 * 8)
    assert {**first, **resumed} == uninterrupted


def test_seed_changes_the_order(dataset):
    a = _stream(dataset, dp=1, global_batch=N, batches=1, seed=0)
    b = _stream(dataset, dp=1, global_batch=N, batches=1, seed=1)
    assert sorted(a.values()) == sorted(b.values()) and list(a.values()) != list(b.values())


def test_epoch_permutation_depends_only_on_seed_and_epoch():
    np.testing.assert_array_equal(epoch_permutation(100, 3, 5), epoch_permutation(100, 3, 5))
    assert sorted(epoch_permutation(100, 3, 5)) == list(range(100))
    assert not np.array_equal(epoch_permutation(100, 3, 5), epoch_permutation(100, 3, 6))
    # Pinned: checkpoints store only consumed_samples, so the order must never change between versions.
    assert epoch_permutation(10, 0, 0).tolist() == [3, 2, 1, 8, 6, 0, 7, 4, 5, 9]


def test_rank_positions():
    assert rank_positions(16, 8, 0, 2) == range(16, 20) and rank_positions(16, 8, 1, 2) == range(20, 24)
    with pytest.raises(ValueError, match=r"global_batch \(6\) must be a positive multiple of dp \(4\)"):
        rank_positions(0, 6, 0, 4)
    with pytest.raises(ValueError, match="dp_rank 2 is not in"):
        rank_positions(0, 8, 2, 2)


def test_batch_larger_than_the_data_set(dataset):
    with ShardedReader(dataset, resolution_px=8, global_batch=2 * N + 4) as reader:
        ids = reader.next_batch().ids
    assert len(ids) == 2 * N + 4 and set(ids) == {f"s{i:03d}" for i in range(N)}


def test_random_access_and_downsampling(dataset):
    with ShardedReader(dataset, resolution_px=4, global_batch=1) as reader:
        assert len(reader) == N
        batch = reader.read([36, 5, 5, 20, 0])
        with pytest.raises(IndexError, match="sample index 37 is out of range"):
            reader.read([37])
    assert batch.ids == ["s036", "s005", "s005", "s020", "s000"] and batch.captions[0] == "caption 36"
    assert batch.images.shape == (5, 3, 4, 4) and batch.images.is_contiguous()
    assert [int(v) for v in batch.images[:, 1, 2, 3]] == [36, 5, 5, 20, 0]
    assert batch.text_emb is None and batch.text_len is None


def test_area_downsample_is_exact():
    x = np.zeros((1, 4, 4, 3), np.uint8)
    x[0, :2, :2, 0] = [[0, 1], [0, 0]]  # mean 0.25 -> 0
    x[0, :2, 2:, 0] = [[1, 1], [0, 0]]  # mean 0.5 -> 1 (half up)
    x[0, 2:, :2, 0] = [[255, 255], [255, 254]]  # 254.75 -> 255
    x[0, 2:, 2:, 0] = [[10, 20], [30, 41]]  # 25.25 -> 25
    x[0, :, :, 2] = 7
    out = area_downsample(x, 2)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(out[0, :, :, 0], [[0, 1], [255, 25]])
    assert (out[..., 1] == 0).all() and (out[..., 2] == 7).all()
    rng = np.random.default_rng(0)
    for px, r in [(12, 4), (64, 16), (64, 4), (64, 2), (48, 48)]:  # f = 3, 4, 16 (uint16 limit), 32 (uint32), 1
        images = rng.integers(0, 256, (3, px, px, 3), dtype=np.uint8)
        f = px // r
        means = images.reshape(3, r, f, r, f, 3).astype(np.float64).mean(axis=(2, 4))
        np.testing.assert_array_equal(area_downsample(images, r), np.floor(means + 0.5).astype(np.uint8))
    with pytest.raises(ValueError, match="cannot area-downsample 12x12 images to 5 px"):
        area_downsample(np.zeros((1, 12, 12, 3), np.uint8), 5)


@pytest.mark.parametrize("resolution_px", [3, 16, 0])
def test_bad_resolution(dataset, resolution_px):
    with pytest.raises(ValueError, match=f"manifest.json: resolution_px {resolution_px} must divide the stored "
                                         "resolution 8"):
        ShardedReader(dataset, resolution_px=resolution_px, global_batch=8)


def test_bad_layout():
    with pytest.raises(ValueError, match=r"global_batch \(6\) must be a positive multiple of dp \(4\)"):
        ShardedReader("/nonexistent", resolution_px=8, global_batch=6, dp=4)


@pytest.fixture
def copy_of(dataset, tmp_path):
    for p in dataset.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    return tmp_path


def _read_all(root, verify_checksums=True):
    with ShardedReader(root, resolution_px=8, global_batch=1, verify_checksums=verify_checksums) as reader:
        reader.read(range(N))


def test_missing_shard(copy_of):
    (copy_of / "shard-00002.h5").unlink()
    with pytest.raises(FileNotFoundError, match=f"{copy_of / 'shard-00002.h5'}: shard file missing"):
        _read_all(copy_of)


def test_flipped_byte_is_a_checksum_mismatch(copy_of):
    path = copy_of / "shard-00001.h5"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    digest = r"[0-9a-f]{12}…"
    with pytest.raises(OSError, match=rf"{path}: sha256 mismatch \(manifest {digest}, file {digest}\); "
                                      "the shard is corrupt or was replaced"):
        _read_all(copy_of)


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_shard(copy_of, keep):
    path = copy_of / "shard-00003.h5"
    os.truncate(path, int(path.stat().st_size * keep))
    with pytest.raises(OSError, match="sha256 mismatch"):
        _read_all(copy_of)
    # Without the checksum, h5py's own error is wrapped into one line naming the file.
    with pytest.raises(OSError, match=rf"^{path}: cannot (open shard|read sample \d+): ") as e:
        _read_all(copy_of, verify_checksums=False)
    assert "\n" not in str(e.value)


def test_corrupt_chunk_names_the_sample(tmp_path):
    samples = [(np.full((8, 8, 3), i, np.uint8), "c", f"s{i}") for i in range(10)]  # compressible
    write_dataset(samples, tmp_path, resolution_px=8, compression="lzf", progress=False)
    path = tmp_path / "shard-00000.h5"
    with h5py.File(path, "r") as f:
        chunk = f["images"].id.get_chunk_info_by_coord((3, 0, 0, 0))
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset)
        f.write(b"\xff" * chunk.size)
    with ShardedReader(tmp_path, resolution_px=8, global_batch=1, verify_checksums=False) as reader:
        np.testing.assert_array_equal(reader.read([2]).images[0].numpy(), samples[2][0].transpose(2, 0, 1))
        with pytest.raises(OSError, match=rf"^{path}: cannot read sample 3: .*filter") as e:
            reader.read([7, 1, 3])
    assert "\n" not in str(e.value)
    with ShardedReader(tmp_path, resolution_px=8, global_batch=1, verify_checksums=False, on_corrupt="skip",
                       max_corrupt=1) as reader:
        assert reader.read([7, 1, 3]).ids == ["s7", "s1", "s4"]      # sample 3 alone is skipped
        assert reader.skipped == {3} and reader.corrupt[0].startswith(f"{path} sample 3: ")


def test_images_of_another_dtype_are_refused_at_open(copy_of):
    """A shard storing float images in [0, 1] (would be cast to black 0/1 uint8 images) is refused."""
    import json

    from harness.data.format import file_sha256
    path = copy_of / "shard-00000.h5"
    with h5py.File(path, "r+") as f:
        images = f["images"][:].astype(np.float32) / 255
        del f["images"]
        f.create_dataset("images", data=images, chunks=(1, 8, 8, 3))
    manifest = json.loads((copy_of / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = file_sha256(path)
    (copy_of / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"^{path}: dataset images is float32, the format stores uint8"):
        _read_all(copy_of)


def test_on_corrupt_skip_counts_names_and_substitutes(copy_of, capsys):
    path = copy_of / "shard-00001.h5"                  # samples 10..19
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    with ShardedReader(copy_of, resolution_px=8, global_batch=1, on_corrupt="skip", max_corrupt=20) as reader:
        batch = reader.read([9, 12, 25, 15])
        # stand-ins: the next readable samples of the data set
        assert batch.ids == ["s009", "s020", "s025", "s020"]
        assert reader.corrupt == [f"{path} (all its samples): {path}: sha256 mismatch " + reader.corrupt[0].split(
            "sha256 mismatch ")[1]] and reader.skipped == set(range(10, 20))
        assert reader.read([11]).ids == ["s020"]                   # known bad: not hashed again
    assert capsys.readouterr().out.count(f"data: skipped {path} (all its samples) (10 samples skipped so far): ") == 1
    with ShardedReader(copy_of, resolution_px=8, global_batch=1, on_corrupt="skip", max_corrupt=9) as reader:
        with pytest.raises(OSError, match=r"10 corrupt samples, more than data.max_corrupt \(9\)"):
            reader.read([15])


def test_manifest_file_entries_stay_in_the_folder(copy_of):
    import json
    manifest = json.loads((copy_of / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../elsewhere.h5"
    (copy_of / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"shards\[0\]: file '../elsewhere.h5' must be a file name"):
        _read_all(copy_of)
