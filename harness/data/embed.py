"""Precompute a frozen text encoder's token states into a data set's shards (`text_emb` float16
[N, L, D], `text_len` [N]), the way large runs precompute T5-XXL, over MPI ranks: rank r rewrites
shards r, r + size, ... (each atomically, with harness.data.format.write_shard), rank 0 writes the
manifest with the new checksums and `text_embedding` {model, revision, dim, max_len}.

A rerun skips shards that already hold this encoder's states at this length, so an interrupted run
resumes; until it finishes, the manifest's checksums of the rewritten shards are stale and readers
refuse them (tools/verify_data.py names them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - registers Blosc: shards may be compressed with it
import numpy as np

from harness.data.format import (
    Manifest,
    ShardInfo,
    file_sha256,
    read_manifest,
    write_manifest,
    write_shard,
)
from harness.data.hf_text import HFTextEncoder
from harness.data.mpi import RankProgress, on_all, on_root, rank_and_size


def embed_shard(path: Path, encoder: HFTextEncoder, max_len: int, compression: str | None, *,
                device: str = "cpu", batch_size: int = 256, on_captions=None) -> ShardInfo:
    """Rewrite one shard with the encoder's states of its captions (kept if it already holds them)."""
    with h5py.File(path, "r") as f:
        n = len(f["ids"])
        if "text_emb" in f and f.attrs.get("text_encoder_revision") == encoder.revision \
                and f.attrs.get("text_max_len") == max_len:
            if on_captions:
                on_captions(n)
            return ShardInfo(path.name, n, file_sha256(path))
        images = f["images"][...]
        captions = list(f["captions"].asstr()[...])
        ids = list(f["ids"].asstr()[...])
        attrs = dict(f.attrs)
    states, lengths = [], []
    for start in range(0, n, batch_size):
        s, k = encoder.encode(captions[start:start + batch_size], max_len, device, batch_size)
        states.append(s.cpu().numpy())
        lengths.append(k.cpu().numpy())
        if on_captions:
            on_captions(len(k))
    attrs.update(text_encoder=encoder.name, text_encoder_revision=encoder.revision, text_max_len=max_len)
    return write_shard(path, images, captions, ids, text_emb=np.concatenate(states), text_len=np.concatenate(lengths),
                       compression=compression, attrs=attrs)


def embed_dataset(root: str | Path, encoder: HFTextEncoder, max_len: int, *, comm=None, device: str = "cpu",
                  batch_size: int = 256, progress: bool = True) -> Manifest:
    """Embed every caption of the data set at `root` on `device` (every rank calls it); returns the new
    manifest (on every rank)."""
    root = Path(root)
    encoder.check_max_len(max_len)
    manifest = on_root(comm, lambda: read_manifest(root))
    rank, size = rank_and_size(comm)

    def mine() -> dict[int, ShardInfo]:
        out = {}
        with RankProgress(comm, manifest.num_samples, desc=f"embedding {root}", unit="caption",
                          enabled=progress) as bar:
            for i in range(rank, len(manifest.shards), size):
                out[i] = embed_shard(root / manifest.shards[i].file, encoder, max_len, manifest.compression,
                                     device=device, batch_size=batch_size, on_captions=bar.update)
        return out

    parts = on_all(comm, mine)

    def finish() -> Manifest:
        infos = {i: s for part in parts for i, s in part.items()}
        new = dataclasses.replace(manifest, shards=tuple(infos[i] for i in range(len(manifest.shards))),
                                  text_embedding=encoder.spec(max_len))
        write_manifest(root, new)
        return new

    return on_root(comm, finish)
