"""Write a data set (shards + manifest), from one process or several MPI ranks writing disjoint shards.

Resumable: each finished shard is recorded in a journal (``.journal/shard-00000.json``: its ShardInfo
and the write parameters). A rerun keeps every shard whose journal entry matches the file's sha256
and the parameters, and writes the rest. The journal is removed once the manifest is written, so a
folder with ``manifest.json`` is a finished data set. A rerun assumes the same samples in the same
order, as the tools that call this produce them.

With an mpi4py communicator, rank r writes shards r, r + size, ... and rank 0 writes the manifest;
every rank passes the same samples and arguments, and every rank returns the manifest or raises
(a failure on one rank is sent to all, so none waits forever in a collective).

`prepare`, the journal (`journal_read` / `journal_write` / `shard_intact`) and `finish` are shared
with harness.data.ingest, which journals whole input units instead of single shards.

The default compression is Blosc-LZ4: on the emoji demo (3,050 images at 256 px, 2 CPUs) the
reader delivered 5,400 images/s at 64 px from it, vs 2,000 from lzf, 1,700 from gzip and 5,900
uncompressed, at 0.31 of the raw size (lzf 0.27, gzip 0.21). Reading it needs `import hdf5plugin`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from harness.data.format import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    Manifest,
    ShardInfo,
    compression_options,
    file_sha256,
    shard_name,
    write_manifest,
    write_shard,
)
from harness.data.mpi import on_all, on_root, rank_and_size

_JOURNAL = ".journal"
_SHARD_GLOB = "shard-*.h5"

Sample = tuple[np.ndarray, str, str]  # (image uint8 [R, R, 3], caption, id)


def prepare(out_dir: Path, overwrite: bool) -> None:
    """Refuse a finished data set unless `overwrite`, in which case delete its manifest, shards and journal."""
    manifest = out_dir / MANIFEST_FILE
    if manifest.exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir}: a data set exists here ({MANIFEST_FILE}); "
                                  f"pass --overwrite (overwrite=True) to replace it")
        manifest.unlink()
    if overwrite:
        for shard in out_dir.glob(_SHARD_GLOB):
            shard.unlink()
        shutil.rmtree(out_dir / _JOURNAL, ignore_errors=True)
    (out_dir / _JOURNAL).mkdir(parents=True, exist_ok=True)


def journal_read(out_dir: Path, name: str, params: dict):
    """What an earlier run journaled as finished under `name` with the same `params`, else None."""
    path = out_dir / _JOURNAL / f"{name}.json"
    if not path.exists():
        return None
    entry = json.loads(path.read_text())
    return entry["payload"] if entry["params"] == params else None


def journal_write(out_dir: Path, name: str, payload, params: dict) -> None:
    """Journal `name` as finished (atomically, after the shards it lists were renamed into place)."""
    path = out_dir / _JOURNAL / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"payload": payload, "params": params}))
    os.replace(tmp, path)


def shard_intact(out_dir: Path, info: ShardInfo) -> bool:
    """Whether the shard file exists with the sha256 recorded for it."""
    path = out_dir / info.file
    return path.is_file() and file_sha256(path) == info.sha256


def _completed(out_dir: Path, index: int, params: dict) -> ShardInfo | None:
    """The ShardInfo of shard `index` if a previous run finished it with the same parameters, else None."""
    payload = journal_read(out_dir, shard_name(index), params)
    info = ShardInfo(**payload) if payload is not None else None
    return info if info is not None and shard_intact(out_dir, info) else None


def _my_shards(samples: Iterable[Sample], per_shard: int, rank: int, size: int,
               bar: tqdm) -> Iterator[tuple[int, int, Callable[[], list[Sample]]]]:
    """Yield (shard index, sample count, loader) for this rank's shards rank, rank + size, ...

    With a Sequence only this rank's samples are ever loaded, and only when the loader is called
    (image decoding is the expensive part; a resumed shard is never loaded). A plain iterable is
    walked whole by every rank, keeping its own shards.
    """
    if isinstance(samples, Sequence):
        def load(start: int, stop: int) -> list[Sample]:
            chunk = []
            for i in range(start, stop):
                chunk.append(samples[i])
                bar.update(1)
            return chunk

        for index in range(rank, -(-len(samples) // per_shard), size):
            start, stop = index * per_shard, min((index + 1) * per_shard, len(samples))
            yield index, stop - start, lambda start=start, stop=stop: load(start, stop)
        return
    chunk: list[Sample] = []
    count = 0
    for count, sample in enumerate(samples, start=1):
        bar.update(1)
        if (count - 1) // per_shard % size == rank:
            chunk.append(sample)
        if count % per_shard == 0 and chunk:
            yield (count - 1) // per_shard, len(chunk), lambda chunk=chunk: chunk
            chunk = []
    if chunk:
        yield (count - 1) // per_shard, len(chunk), lambda chunk=chunk: chunk


def _check_sample(sample: Sample, resolution_px: int, where: str) -> None:
    image, caption, sample_id = sample
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8
            and image.shape == (resolution_px, resolution_px, 3)):
        got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{where} (id {sample_id!r}): image must be uint8 [{resolution_px}, {resolution_px}, 3], "
                         f"got {got}")
    if not isinstance(caption, str) or not isinstance(sample_id, str):
        raise ValueError(f"{where} (id {sample_id!r}): caption and id must be str")


def _write_my_shards(samples: Iterable[Sample], out_dir: Path, params: dict, rank: int, size: int,
                     progress: bool) -> dict[int, ShardInfo]:
    """Write (or keep, if a previous run finished them) this rank's shards; return their ShardInfos."""
    per_shard = params["samples_per_shard"]
    total = None
    if isinstance(samples, Sequence):  # the bar counts this rank's samples
        total = sum(min(per_shard, len(samples) - i * per_shard)
                    for i in range(rank, -(-len(samples) // per_shard), size))
    elif hasattr(samples, "__len__"):  # the bar counts the whole stream, which every rank walks
        total = len(samples)
    infos, kept = {}, 0
    with tqdm(total=total, disable=not progress or rank != 0, unit="img", desc=f"writing {out_dir}") as bar:
        for index, count, load in _my_shards(samples, per_shard, rank, size, bar):
            info = _completed(out_dir, index, params)
            if info is not None and info.num_samples == count:
                if isinstance(samples, Sequence):
                    bar.update(count)
                infos[index], kept = info, kept + 1
                continue
            chunk = load()
            for j, sample in enumerate(chunk):
                _check_sample(sample, params["resolution_px"], f"sample {index * per_shard + j}")
            images = np.stack([image for image, _, _ in chunk])
            info = write_shard(out_dir / shard_name(index), images, [c for _, c, _ in chunk],
                               [i for _, _, i in chunk], compression=params["compression"],
                               attrs={"source": params["source"]})
            journal_write(out_dir, shard_name(index), vars(info), params)
            infos[index] = info
        if kept and not bar.disable:
            bar.write(f"{out_dir}: kept {kept} shard(s) finished by an earlier run")
    return infos


def _finish(out_dir: Path, infos: dict[int, ShardInfo], params: dict) -> Manifest:
    """The manifest of shards 0..K-1 (every index must have been written)."""
    if not infos:
        raise ValueError(f"{out_dir}: no samples to write")
    if sorted(infos) != list(range(len(infos))):
        raise RuntimeError(f"{out_dir}: shards {sorted(set(range(max(infos) + 1)) - set(infos))} were not written")
    return finish(out_dir, [infos[i] for i in range(len(infos))], resolution_px=params["resolution_px"],
                  source=params["source"], compression=params["compression"])


def finish(out_dir: Path, shards: Sequence[ShardInfo], *, resolution_px: int, source: str,
           compression: str | None) -> Manifest:
    """Write the manifest listing `shards` in this order, then remove the journal, temporaries and
    shard files left from a larger earlier run."""
    shards = tuple(shards)
    manifest = Manifest(format_version=FORMAT_VERSION, resolution_px=resolution_px,
                        num_samples=sum(s.num_samples for s in shards), shards=shards,
                        source=source, compression=compression)
    write_manifest(out_dir, manifest)
    listed = {s.file for s in shards}
    for path in out_dir.glob(_SHARD_GLOB):
        if path.name not in listed:
            path.unlink()
    for path in out_dir.glob(".shard-*.h5.tmp"):
        path.unlink()
    shutil.rmtree(out_dir / _JOURNAL, ignore_errors=True)
    return manifest


def write_dataset(samples: Iterable[Sample], out_dir: str | Path, *, resolution_px: int,
                  samples_per_shard: int = 1024, compression: str | None = "blosc-lz4", source: str = "",
                  overwrite: bool = False, comm=None, progress: bool = True) -> Manifest:
    """Write (image uint8 [R, R, 3], caption, id) samples as a data set in `out_dir`; return its manifest."""
    out_dir = Path(out_dir)
    compression_options(compression)  # an unknown compression fails before any work
    if samples_per_shard <= 0 or resolution_px <= 0:
        raise ValueError(f"samples_per_shard and resolution_px must be positive, got "
                         f"{samples_per_shard} and {resolution_px}")
    rank, size = rank_and_size(comm)
    params = {"format_version": FORMAT_VERSION, "resolution_px": resolution_px,
              "samples_per_shard": samples_per_shard, "compression": compression, "source": source}
    on_root(comm, lambda: prepare(out_dir, overwrite))
    parts = on_all(comm, lambda: _write_my_shards(samples, out_dir, params, rank, size, progress))
    return on_root(comm, lambda: _finish(out_dir, {i: s for part in parts for i, s in part.items()}, params))
