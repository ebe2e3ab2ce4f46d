"""HDF5 shard format v1 and the data set manifest.

A data set is a folder holding ``manifest.json`` and ``shard-00000.h5`` ... . Each shard has

- ``images``   uint8 [N, H, W, 3], chunked (1, H, W, 3): one image per chunk, so random access
  decompresses exactly the image it needs;
- ``captions`` and ``ids``, variable-length UTF-8 strings [N];
- optionally ``text_emb`` float16 [N, L, D] and ``text_len`` int32 [N] (a frozen text encoder's
  output, precomputed);
- file attributes ``format_version`` and ``source``.

Shards and the manifest are written under a temporary name and renamed when complete, so a file
with a final name is always whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # registers the Blosc filter so "blosc-lz4" shards can be written and read
import numpy as np

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
COMPRESSIONS = (None, "lzf", "gzip", "blosc-lz4")


@dataclass(frozen=True)
class ShardInfo:
    file: str  # relative to the data set folder
    num_samples: int
    sha256: str  # of the whole file's bytes


@dataclass(frozen=True)
class Manifest:
    format_version: int
    resolution_px: int
    num_samples: int
    shards: tuple[ShardInfo, ...]
    caption_field: str = "captions"
    source: str = ""
    compression: str | None = None
    text_embedding: dict | None = None  # {"model", "revision", "dim", "max_len"} when shards hold text_emb


# key -> accepted JSON types; everything in a manifest is checked before any shard is opened.
_REQUIRED = {"format_version": int, "resolution_px": int, "num_samples": int, "shards": list}
_OPTIONAL = {"caption_field": str, "source": str, "compression": (str, type(None)),
             "text_embedding": (dict, type(None))}
_SHARD_KEYS = {"file": str, "num_samples": int, "sha256": str}
_TEXT_EMBEDDING_KEYS = {"model": str, "dim": int, "max_len": int}
_TEXT_EMBEDDING_OPTIONAL = {"revision": str}     # the encoder's fingerprint (harness.data.hf_text)


def shard_name(index: int) -> str:
    """File name of shard ``index`` in a data set folder."""
    return f"shard-{index:05d}.h5"


def file_digest(path: str | Path, algorithm: str = "sha256", on_block: Callable[[int], None] | None = None) -> str:
    """Hex digest (hashlib's `algorithm`) of a file's bytes, read in blocks; `on_block(n)` is called
    after each block of n bytes (progress). The one file-hash helper of the harness."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
            if on_block is not None:
                on_block(len(block))
    return digest.hexdigest()


def file_sha256(path: str | Path, on_block: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file's bytes (shard checksums in the manifest)."""
    return file_digest(path, "sha256", on_block)


def _check_types(where: str, d: dict, spec: dict, required: bool) -> None:
    for key, kind in spec.items():
        if key not in d:
            if required:
                raise ValueError(f"{where}: missing key '{key}'")
            continue
        # bool is an int subclass; a manifest saying `"num_samples": true` is wrong, not 1.
        if isinstance(d[key], bool) or not isinstance(d[key], kind):
            raise ValueError(f"{where}: key '{key}' has type {type(d[key]).__name__}")


def read_manifest(root: str | Path) -> Manifest:
    """Load and validate ``root/manifest.json``; any problem is a one-line error naming the file and key."""
    path = Path(root) / MANIFEST_FILE
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest; not a data set (write one with tools/make_shards.py)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    # The version decides how everything else is read, so it is checked first.
    if "format_version" not in d:
        raise ValueError(f"{path}: missing key 'format_version'")
    if d["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: key 'format_version' is {d['format_version']!r}; "
                         f"this harness reads {FORMAT_VERSION}")
    unknown = sorted(set(d) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ValueError(f"{path}: unknown key '{unknown[0]}'")
    _check_types(str(path), d, _REQUIRED, required=True)
    _check_types(str(path), d, _OPTIONAL, required=False)
    shards = []
    for i, s in enumerate(d["shards"]):
        where = f"{path}: shards[{i}]"
        if not isinstance(s, dict):
            raise ValueError(f"{where} is not an object")
        _check_types(where, s, _SHARD_KEYS, required=True)
        name = s["file"]
        if Path(name).name != name or name in ("", ".", "..") or "\\" in name:
            raise ValueError(f"{where}: file {name!r} must be a file name in the data set folder, not a path")
        shards.append(ShardInfo(file=s["file"], num_samples=s["num_samples"], sha256=s["sha256"]))
    if sum(s.num_samples for s in shards) != d["num_samples"]:
        raise ValueError(f"{path}: key 'num_samples' is {d['num_samples']} but the shards hold "
                         f"{sum(s.num_samples for s in shards)}")
    if d["resolution_px"] <= 0:
        raise ValueError(f"{path}: key 'resolution_px' must be positive, got {d['resolution_px']}")
    if d.get("compression") not in COMPRESSIONS:
        raise ValueError(f"{path}: key 'compression' is {d['compression']!r}; expected one of {COMPRESSIONS}")
    if d.get("text_embedding") is not None:
        _check_types(f"{path}: text_embedding", d["text_embedding"], _TEXT_EMBEDDING_KEYS, required=True)
        _check_types(f"{path}: text_embedding", d["text_embedding"], _TEXT_EMBEDDING_OPTIONAL, required=False)
    fields = {k: d[k] for k in _OPTIONAL if k in d}
    return Manifest(format_version=d["format_version"], resolution_px=d["resolution_px"],
                    num_samples=d["num_samples"], shards=tuple(shards), **fields)


def write_manifest(root: str | Path, manifest: Manifest) -> None:
    """Write ``root/manifest.json`` atomically (temporary file, then rename)."""
    path = Path(root) / MANIFEST_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    d = dataclasses.asdict(manifest)
    d["shards"] = [dataclasses.asdict(s) for s in manifest.shards]
    tmp.write_text(json.dumps(d, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def compression_options(compression: str | None) -> dict:
    """``h5py.create_dataset`` keyword arguments for one of ``COMPRESSIONS``."""
    if compression is None:
        return {}
    if compression == "lzf":
        return {"compression": "lzf"}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    if compression == "blosc-lz4":
        # Byte shuffle is a no-op on uint8, so plain LZ4 inside Blosc (its fast multi-threaded codec).
        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.NOSHUFFLE))
    raise ValueError(f"compression {compression!r} is not one of {COMPRESSIONS}")


def write_shard(path: str | Path, images: np.ndarray, captions: list[str], ids: list[str], *,
                text_emb: np.ndarray | None = None, text_len: np.ndarray | None = None,
                compression: str | None = None, attrs: dict | None = None) -> ShardInfo:
    """Write one shard atomically and return its ShardInfo (sha256 of the final file's bytes)."""
    path = Path(path)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{path}: images must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    n = images.shape[0]
    if n == 0:
        raise ValueError(f"{path}: a shard needs at least one sample")
    if len(captions) != n or len(ids) != n:
        raise ValueError(f"{path}: {n} images but {len(captions)} captions and {len(ids)} ids")
    if (text_emb is None) != (text_len is None):
        raise ValueError(f"{path}: text_emb and text_len go together")
    if text_emb is not None:
        text_emb, text_len = np.asarray(text_emb, dtype=np.float16), np.asarray(text_len, dtype=np.int32)
        if text_emb.ndim != 3 or text_emb.shape[0] != n or text_len.shape != (n,):
            raise ValueError(f"{path}: text_emb must be [N, L, D] and text_len [N] with N={n}, "
                             f"got {list(text_emb.shape)} and {list(text_len.shape)}")
    options = compression_options(compression)
    tmp = path.with_name(f".{path.name}.tmp")
    strings = h5py.string_dtype("utf-8")
    with h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["source"] = ""
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        f.create_dataset("images", data=images, chunks=(1, *images.shape[1:]), **options)
        f.create_dataset("captions", data=list(captions), dtype=strings)
        f.create_dataset("ids", data=list(ids), dtype=strings)
        if text_emb is not None:
            f.create_dataset("text_emb", data=text_emb, chunks=(1, *text_emb.shape[1:]), **options)
            f.create_dataset("text_len", data=text_len)
    digest = file_sha256(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())  # a renamed shard must not turn out empty after a crash
    os.replace(tmp, path)
    return ShardInfo(file=path.name, num_samples=n, sha256=digest)
