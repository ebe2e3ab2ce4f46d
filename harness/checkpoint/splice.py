"""Checkpoints that hold some of their tensors as another checkpoint's bytes (how growing carries the core).

A torch distributed checkpoint's `.metadata` maps every tensor to byte ranges of its shard files,
each range one self-contained serialized tensor (chunk). `splice` copies the ranges of chosen
tensors of a source checkpoint into one file of a checkpoint being written (`carried.distcp`),
each distinct range once, and adds them to its metadata under their new keys: `model.X` and
`ema.X` of a grown model can both name the source's `ema.X` bytes. Nothing goes through a model
or a serializer, so carrying a core costs a file copy of its bytes.

A tensor keeps the dtype it was stored in. Loading converts it to the dtype of the tensor it loads
into (`copy_`), the same single rounding as copying the source tensor into a model's bf16 weights.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import MetadataIndex

from harness.checkpoint import io

CARRIED_FILE = "carried.distcp"


@dataclass(frozen=True)
class Borrowed:
    """Tensors a checkpoint being written takes from `source`: key written -> key in `source`."""

    source: Path
    keys: dict[str, str]


def _copy_range(src, dst, offset: int, length: int, name: Path) -> None:
    """`length` bytes of `src` from `offset` to the end of `dst`, in the kernel (copy_file_range)."""
    while length:
        done = os.copy_file_range(src.fileno(), dst.fileno(), length, offset)
        if done == 0:
            raise io.CheckpointError(f"{name}: ends before byte {offset + length:,} that its checkpoint's metadata lists")
        offset, length = offset + done, length - done


def splice(target: Path, borrowed: Borrowed) -> int:
    """Copy `borrowed` tensors from their source checkpoint into checkpoint folder `target` (written
    by dist_checkpointing.save, not yet published) and record them in its `.metadata`; returns the
    bytes copied. Raises CheckpointError naming the file if a source tensor is missing or truncated."""
    source, wanted = Path(borrowed.source), borrowed.keys
    src, dst = io.dcp_metadata(source), io.dcp_metadata(target)
    if missing := sorted(k for k in set(wanted.values()) if k not in src.state_dict_metadata):
        raise io.CheckpointError(f"{source}: does not store {', '.join(missing[:4])} ({len(missing)} in all)")
    chunks: dict[str, list] = {}
    for index, info in src.storage_data.items():
        chunks.setdefault(index.fqn, []).append((index, info))
    placed: dict[tuple[str, int], int] = {}                 # (source file, offset) -> offset in CARRIED_FILE
    storage = {}
    with open(target / CARRIED_FILE, "wb", buffering=0) as out:    # tell() is the file offset
        for key, source_key in sorted(wanted.items(), key=lambda kv: kv[1]):
            for index, info in chunks.get(source_key, []):
                where = (info.relative_path, info.offset)
                if where not in placed:
                    placed[where] = out.tell()
                    with open(source / info.relative_path, "rb") as f:
                        _copy_range(f, out, info.offset, info.length, source / info.relative_path)
                storage[MetadataIndex(key, index.offset, index.index)] = _StorageInfo(
                    CARRIED_FILE, placed[where], info.length, info.transform_descriptors)
            dst.state_dict_metadata[key] = src.state_dict_metadata[source_key]
        copied = out.tell()
        os.fsync(out.fileno())
    dst.storage_data.update(storage)
    tmp = target / ".metadata.splice"
    with open(tmp, "wb") as f:
        pickle.dump(dst, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target / ".metadata")
    return copied
