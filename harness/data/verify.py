"""Check a data set against its manifest: every shard's sha256, its layout, and a decode of a few
random samples per shard. Shards are split over ranks (shard i to rank i mod world), so a job
checks a data set once in all instead of every reading rank hashing every shard on first use.

    problems = verify_shards("data/emoji/train", rank, world)   # this rank's shards; [] if all good
    # after an all-gather of the problems finds none, readers can skip their own checks
    # (ShardedReader(..., verify_checksums=False)).

`tools/verify_data.py` runs it under mpiexec with a progress bar and an exit status.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - registers the Blosc filter so "blosc-lz4" shards decode
import numpy as np

from harness.data.format import Manifest, file_sha256, read_manifest
from harness.data.mpi import RankProgress, on_all, rank_and_size
from harness.data.reader import layout_problem


def check_shard(root: Path, manifest: Manifest, index: int, *, samples: int = 4, seed: int = 0,
                on_bytes: Callable[[int], None] | None = None) -> str | None:
    """One line naming shard `index` and what is wrong with it, or None: a missing file, a sha256
    that is not the manifest's, a layout the manifest does not describe, or one of `samples`
    random samples (images, caption, id, text embedding) that does not decode."""
    info = manifest.shards[index]
    path = root / info.file
    if not path.is_file():
        return f"{path}: missing"
    digest = file_sha256(path, on_bytes)
    if digest != info.sha256:
        return f"{path}: sha256 {digest[:12]}… is not the manifest's {info.sha256[:12]}…"
    try:
        with h5py.File(path, "r", locking=False) as f:
            if (why := layout_problem(f, info, manifest)) is not None:
                return f"{path}: {why}"
            rng = np.random.default_rng([seed, index])
            for i in np.sort(rng.choice(info.num_samples, min(samples, info.num_samples), replace=False)):
                try:
                    f["images"][i], f[manifest.caption_field].asstr()[i], f["ids"].asstr()[i]
                    if manifest.text_embedding:
                        f["text_emb"][i], f["text_len"][i]
                except (OSError, ValueError, UnicodeDecodeError) as e:
                    return f"{path}: sample {i} does not decode ({' '.join(str(e).split())})"
    except OSError as e:
        return f"{path}: cannot be opened as HDF5 ({' '.join(str(e).split())})"
    return None


def verify_shards(root: str | Path, rank: int = 0, world: int = 1, *, samples: int = 4, seed: int = 0,
                  on_bytes: Callable[[int], None] | None = None) -> list[str]:
    """Check shards rank, rank + world, ... of the data set at `root`; one line per bad shard.
    A manifest that cannot be read raises (FileNotFoundError or ValueError naming it)."""
    root = Path(root)
    manifest = read_manifest(root)
    problems = [check_shard(root, manifest, i, samples=samples, seed=seed, on_bytes=on_bytes)
                for i in range(rank, len(manifest.shards), world)]
    return [p for p in problems if p is not None]


def verify_dataset(root: str | Path, comm=None, *, samples: int = 4, seed: int = 0,
                   progress: bool = False) -> list[str] | None:
    """verify_shards over the ranks of `comm` (collective); rank 0 returns every bad shard's line,
    sorted (shard order), the others None; the bar counts the bytes hashed by all ranks."""
    root = Path(root)
    rank, world = rank_and_size(comm)
    total = None
    if rank == 0 and (root / "manifest.json").is_file():
        total = sum((root / s.file).stat().st_size for s in read_manifest(root).shards if (root / s.file).is_file())
    with RankProgress(comm, total, desc=f"verifying {root}", unit="B", unit_scale=True, enabled=progress) as bar:
        parts = on_all(comm, lambda: verify_shards(root, rank, world, samples=samples, seed=seed,
                                                   on_bytes=bar.update))
    return sorted(line for part in parts for line in part) if parts is not None else None
