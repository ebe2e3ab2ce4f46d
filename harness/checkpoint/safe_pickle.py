"""Reading torch distributed checkpoints without running code from them.

torch's `FileSystemReader.read_metadata` unpickles a checkpoint's `.metadata` file with plain
`pickle.load`, and its default load planner reads byte items with `torch.load(weights_only=False)`:
a crafted checkpoint runs arbitrary code in both. `install()` replaces the two with readers that
accept only what a checkpoint's metadata legitimately holds - torch.distributed.checkpoint's own
metadata and plan classes, torch sizes, dtypes and layouts, and plain containers - and refuse any
other global with an error naming the file. The harness installs it before it reads a checkpoint.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import filesystem
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta

# Modules whose classes a DCP .metadata pickle is made of (dataclasses and enums, no behaviour).
_CHECKPOINT_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.planner")
_ALLOWED = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),          # how torch pickles a torch.layout
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file asks to load something other than checkpoint metadata."""


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module, name) in _ALLOWED or (module in _CHECKPOINT_MODULES and not name.startswith("__"))
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format)):
            allowed = True
        if not allowed:
            raise UnsafeCheckpointError(f"{self.source}: refuses to load {module}.{name}; a checkpoint's metadata "
                                        "holds only torch.distributed.checkpoint metadata (a crafted or foreign file?)")
        return super().find_class(module, name)


def load_metadata(data: bytes, source: str):
    """Unpickle checkpoint metadata, allowing only the classes listed in this module."""
    return _MetadataUnpickler(io.BytesIO(data), source).load()


def _read_metadata(self, *args: Any, **kwargs: Any):
    """FileSystemReader.read_metadata with the restricted unpickler (same behaviour otherwise)."""
    path = self._get_metadata_path(kwargs.get("rank"))
    with self.fs.create_stream(path, "rb") as f:
        metadata = load_metadata(f.read(), str(path))
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    metadata.storage_meta.load_id = self.load_id
    return metadata


def _load_bytes(self, read_item, value: io.BytesIO) -> None:
    """DefaultLoadPlanner.load_bytes with torch.load(weights_only=True)."""
    obj = torch.load(value, weights_only=True)
    if self.flatten_state_dict:
        set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
    else:
        self.state_dict[read_item.dest_index.fqn] = obj


def install() -> None:
    """Make every torch distributed-checkpoint read in this process use the restricted readers."""
    filesystem.FileSystemReader.read_metadata = _read_metadata
    DefaultLoadPlanner.load_bytes = _load_bytes
