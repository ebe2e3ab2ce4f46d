"""Measure how fast a data set reads: raw h5py slices vs ShardedReader batches at 64 and 256 px.

    python tools/bench_data.py --data data/emoji/train --seconds 5 [--json bench.json]

Rows: (a) `raw slices`: h5py reading the `images` datasets front to back in 64-image slices (the
decode ceiling for this compression); (b) `reader R px`: ShardedReader.next_batch at global_batch
64, random order, with area down-sampling on the fly; (c) `downsample`: area_downsample alone on
in-memory 64-image batches. The page cache is warm after the first pass, so these are decode
rates, not disk rates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - registers the Blosc filter
import numpy as np

from harness.data.format import read_manifest
from harness.data.reader import ShardedReader, area_downsample

BATCH = 64


def _timed(step, seconds: float) -> tuple[int, float]:
    """Call step() (returning a count) until `seconds` have passed; return (total count, elapsed)."""
    count, start = 0, time.perf_counter()
    while True:
        count += step()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count, elapsed


def bench_raw(root: Path, seconds: float) -> dict:
    """Images/s and decoded bytes/s of h5py reading `images` in 64-image slices, cycling over the shards."""
    manifest = read_manifest(root)
    files = [h5py.File(root / s.file, "r", locking=False) for s in manifest.shards]
    slices = [(f["images"], a) for f in files for a in range(0, len(f["images"]), BATCH)]
    position = 0

    def step() -> int:
        nonlocal position
        ds, a = slices[position % len(slices)]
        position += 1
        return len(ds[a:a + BATCH])

    images, elapsed = _timed(step, seconds)
    for f in files:
        f.close()
    image_bytes = manifest.resolution_px ** 2 * 3
    return {"images_per_s": images / elapsed, "mb_per_s": images * image_bytes / elapsed / 1e6}


def bench_reader(root: Path, resolution_px: int, seconds: float) -> dict:
    """Images/s of ShardedReader.next_batch at `resolution_px`, global_batch 64, after one warm-up batch."""
    with ShardedReader(root, resolution_px=resolution_px, global_batch=BATCH) as reader:
        start = time.perf_counter()
        reader.next_batch()  # opens every shard it touches and checks its sha256
        first = time.perf_counter() - start
        images, elapsed = _timed(lambda: len(reader.next_batch().ids), seconds)
    return {"images_per_s": images / elapsed, "first_batch_s": first}


def bench_downsample(stored_px: int, resolution_px: int, seconds: float) -> dict:
    """Images/s of area_downsample on random 64-image batches held in memory."""
    images = np.random.default_rng(0).integers(0, 256, (BATCH, stored_px, stored_px, 3), dtype=np.uint8)
    count, elapsed = _timed(lambda: len(area_downsample(images, resolution_px)), seconds)
    return {"images_per_s": count / elapsed}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data set folder (with manifest.json)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    manifest = read_manifest(args.data)
    stored = manifest.resolution_px
    size_mb = sum((args.data / s.file).stat().st_size for s in manifest.shards) / 1e6
    results = {"data": str(args.data), "compression": manifest.compression or "none",
               "num_samples": manifest.num_samples, "stored_px": stored, "size_mb": size_mb,
               "raw_slices": bench_raw(args.data, args.seconds)}
    for r in (64, 256):
        if r <= stored and stored % r == 0:
            results[f"reader_{r}px"] = bench_reader(args.data, r, args.seconds)
    if stored % 64 == 0 and stored > 64:
        results["downsample_to_64px"] = bench_downsample(stored, 64, args.seconds)

    print(f"{args.data}: {manifest.num_samples} images at {stored} px, compression {results['compression']}, "
          f"{size_mb:.1f} MB on disk ({size_mb * 1e6 / (manifest.num_samples * stored * stored * 3):.2f} of raw)")
    print(f"{'measurement':<26}{'images/s':>10}{'MB/s':>10}")
    raw = results["raw_slices"]
    print(f"{'raw slices (h5py, 64)':<26}{raw['images_per_s']:>10.0f}{raw['mb_per_s']:>10.0f}")
    for r in (64, 256):
        if f"reader_{r}px" in results:
            row = results[f"reader_{r}px"]
            print(f"{f'reader {r} px (batch 64)':<26}{row['images_per_s']:>10.0f}{'':>10}"
                  f"   first batch {row['first_batch_s']:.2f} s (opens + sha256)")
    if "downsample_to_64px" in results:
        print(f"{f'downsample {stored}->64 only':<26}{results['downsample_to_64px']['images_per_s']:>10.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as e:  # bad input or a corrupt file: one line naming it, no traceback
        sys.exit(f"bench_data: error: {e}")
