"""Turn an image folder + captions (JSONL or CSV) into a sharded HDF5 data set.

    python tools/make_shards.py --images-root data/raw/fluent-emoji-3d \\
        --captions data/raw/fluent-emoji-3d/metadata.jsonl --split train --out data/emoji/train --resolution 256
    mpiexec -n 2 python tools/make_shards.py ...      # ranks write disjoint shards

Captions rows have `file` (relative to --images-root) and `caption`, optionally `id` (default: the
file path without its suffix) and `split`. Images are composited on white, centre-cropped to a
square and resized to --resolution (exact area average when shrinking by an integer factor).
A rerun after an interruption keeps the shards already written.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.format import COMPRESSIONS
from harness.data.writer import write_dataset


def read_captions(path: Path, split: str | None) -> list[dict]:
    """Rows {file, caption, id} of a JSONL or CSV captions file, keeping only `split` when given."""
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(n, row) for n, row in enumerate(csv.DictReader(f), start=2)]
    else:
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
    kept, seen = [], set()
    for n, row in rows:
        for key in ("file", "caption") + (("split",) if split else ()):
            if not row.get(key):
                raise ValueError(f"{path}:{n}: missing '{key}'")
        if split and row["split"] != split:
            continue
        sample_id = row.get("id") or str(Path(row["file"]).with_suffix(""))
        if sample_id in seen:
            raise ValueError(f"{path}:{n}: id {sample_id!r} appears twice")
        seen.add(sample_id)
        kept.append({"file": row["file"], "caption": row["caption"], "id": sample_id})
    if not kept:
        raise ValueError(f"{path}: no rows" + (f" with split '{split}'" if split else ""))
    return kept


def load_image(path: Path, resolution_px: int) -> np.ndarray:
    """RGB uint8 [R, R, 3]: alpha composited on white, centre-cropped square, resized to R."""
    with Image.open(path) as im:
        im = im.convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(white, im).convert("RGB")
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != resolution_px:
        # BOX is the exact area average for an integer shrink factor; LANCZOS for everything else.
        box = side > resolution_px and side % resolution_px == 0
        im = im.resize((resolution_px, resolution_px), Image.Resampling.BOX if box else Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


class ImageFolderSamples(Sequence):
    """(image, caption, id) samples, each image loaded when indexed (so MPI ranks load only their own)."""

    def __init__(self, images_root: Path, rows: list[dict], resolution_px: int):
        self.images_root, self.rows, self.resolution_px = images_root, rows, resolution_px

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, str, str]:
        row = self.rows[i]
        path = self.images_root / row["file"]
        try:
            image = load_image(path, self.resolution_px)
        except OSError as e:
            raise OSError(f"{path}: cannot load image ({e})") from None
        return image, row["caption"], row["id"]


def mpi_comm():
    """COMM_WORLD when launched by an MPI launcher with more than one rank, else None (mpi4py imported only then)."""
    if not any(k in os.environ for k in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")):
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-root", type=Path, required=True)
    parser.add_argument("--captions", type=Path, required=True, help="JSONL or CSV: file, caption[, id][, split]")
    parser.add_argument("--split", help="keep only rows with this split")
    parser.add_argument("--out", type=Path, required=True, help="data set folder to write")
    parser.add_argument("--resolution", type=int, default=256, help="stored resolution in pixels")
    parser.add_argument("--samples-per-shard", type=int, default=1024)
    parser.add_argument("--compression", default="blosc-lz4", choices=[c or "none" for c in COMPRESSIONS],
                        help="blosc-lz4 (default) decodes ~10x faster than lzf/gzip; see harness.data.writer")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing data set")
    args = parser.parse_args(argv)

    comm = mpi_comm()
    rank = comm.Get_rank() if comm is not None else 0
    samples = ImageFolderSamples(args.images_root, read_captions(args.captions, args.split), args.resolution)
    start = time.perf_counter()
    manifest = write_dataset(samples, args.out, resolution_px=args.resolution,
                             samples_per_shard=args.samples_per_shard,
                             compression=None if args.compression == "none" else args.compression,
                             source=f"{args.captions}" + (f" split={args.split}" if args.split else ""),
                             overwrite=args.overwrite, comm=comm)
    if rank == 0:
        size_mb = sum((args.out / s.file).stat().st_size for s in manifest.shards) / 1e6
        print(f"{args.out}: {manifest.num_samples} samples in {len(manifest.shards)} shards, "
              f"{size_mb:.1f} MB ({args.compression}), {time.perf_counter() - start:.1f} s")
    return manifest


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as e:  # bad input or a corrupt file: one line naming it, no traceback
        sys.exit(f"make_shards: error: {e}")
