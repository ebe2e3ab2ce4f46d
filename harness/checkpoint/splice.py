"""Checkpoints that hold some of their tensors as another checkpoint's bytes (how growing carries the core).

A torch distributed checkpoint's `.metadata` maps every tensor to byte ranges of its shard files,
each range one self-contained serialized tensor (chunk). `Borrowed.start` copies the ranges of
chosen tensors of a source checkpoint, each distinct range once, into a staging file next to the
checkpoint being written, in a thread (copy_file_range and fsync release the GIL: the kernel copies
while the caller builds and writes the rest). `splice` waits for that copy, moves the file into the
written checkpoint (`carried.distcp`) and adds the tensors to its metadata under their new keys:
`model.X` and `ema.X` of a grown model can both name the source's `ema.X` bytes. Nothing goes
through a model or a serializer, so carrying a core costs a file copy of its bytes.

A tensor keeps the dtype it was stored in. Loading converts it to the dtype of the tensor it loads
into (`copy_`), the same single rounding as copying the source tensor into a model's bf16 weights.
"""

from __future__ import annotations

import os
import pickle
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import MetadataIndex

from harness.checkpoint import io

CARRIED_FILE = "carried.distcp"
STAGING_FILE = ".carried.distcp.tmp"      # in the run folder while the copy runs; a rerun overwrites it


@dataclass
class Borrowed:
    """Tensors a checkpoint being written into `run_dir` takes from `source`: key written -> key in
    `source`. The rank that splices calls `start` early; `splice` copies then if nothing started it."""

    source: Path
    keys: dict[str, str]
    run_dir: Path
    _copy: Future | None = field(default=None, repr=False)

    @property
    def staging(self) -> Path:
        return Path(self.run_dir) / STAGING_FILE

    def start(self) -> None:
        """Begin the byte copy in a thread; the source's metadata is read and checked now."""
        source = Path(self.source)
        src = io.dcp_metadata(source)
        if missing := sorted(k for k in set(self.keys.values()) if k not in src.state_dict_metadata):
            raise io.CheckpointError(f"{source}: does not store {', '.join(missing[:4])} ({len(missing)} in all)")
        self.staging.parent.mkdir(parents=True, exist_ok=True)
        pool = ThreadPoolExecutor(1, thread_name_prefix="splice")
        self._copy = pool.submit(_copy_chunks, source, src, sorted(set(self.keys.values())), self.staging)
        pool.shutdown(wait=False)                            # the copy runs on; nothing else is queued

    def copied(self):
        """(source metadata, chunks by source key, (file, offset) -> offset in the staging file)."""
        if self._copy is None:
            self.start()
        return self._copy.result()

    def discard(self) -> None:
        """After a failed save, on the rank that started the copy: wait for it and remove its file."""
        if self._copy is not None:
            self._copy.exception()
            self.staging.unlink(missing_ok=True)


def _copy_range(src, dst, offset: int, length: int, name: Path) -> None:
    """`length` bytes of `src` from `offset` to the end of `dst`, in the kernel (copy_file_range)."""
    while length:
        done = os.copy_file_range(src.fileno(), dst.fileno(), length, offset)
        if done == 0:
            raise io.CheckpointError(f"{name}: ends before byte {offset + length:,} that its checkpoint's metadata lists")
        offset, length = offset + done, length - done


def _copy_chunks(source: Path, src, keys: list[str], staging: Path):
    """Copy every stored chunk of `keys` (source metadata `src`), each distinct range once, into `staging`."""
    chunks: dict[str, list] = {}
    for index, info in src.storage_data.items():
        chunks.setdefault(index.fqn, []).append((index, info))
    placed: dict[tuple[str, int], int] = {}                 # (source file, offset) -> offset in staging
    with open(staging, "wb", buffering=0) as out:            # tell() is the file offset
        for key in keys:
            for _, info in chunks.get(key, []):
                where = (info.relative_path, info.offset)
                if where not in placed:
                    placed[where] = out.tell()
                    with open(source / info.relative_path, "rb") as f:
                        _copy_range(f, out, info.offset, info.length, source / info.relative_path)
        os.fsync(out.fileno())
    return src, chunks, placed


def splice(target: Path, borrowed: Borrowed) -> int:
    """Move `borrowed`'s copied bytes into checkpoint folder `target` (written by
    dist_checkpointing.save, not yet published) and record them in its `.metadata`; returns the
    bytes copied. Raises CheckpointError naming the file if a source tensor is missing or truncated."""
    src, chunks, placed = borrowed.copied()
    dst = io.dcp_metadata(target)
    storage = {}
    for key, source_key in borrowed.keys.items():
        for index, info in chunks.get(source_key, []):
            storage[MetadataIndex(key, index.offset, index.index)] = _StorageInfo(
                CARRIED_FILE, placed[(info.relative_path, info.offset)], info.length, info.transform_descriptors)
        dst.state_dict_metadata[key] = src.state_dict_metadata[source_key]
    copied = borrowed.staging.stat().st_size
    os.replace(borrowed.staging, target / CARRIED_FILE)
    dst.storage_data.update(storage)
    tmp = target / ".metadata.splice"
    with open(tmp, "wb") as f:
        pickle.dump(dst, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target / ".metadata")
    return copied
