"""Where ingested samples come from: an image folder + JSONL/CSV captions, webdataset tars in
img2dataset's layout, and parquet files with image bytes and captions.

A source is cut into input units (a slice of a captions file's rows, one tar, one parquet row
group): the pieces that MPI ranks share out and that a resumed run keeps or redoes whole. A unit
yields Records in a fixed order, the same on every read; each names where it came from (file and
row, or tar and member) for errors and the report.
"""

from __future__ import annotations

import csv
import glob
import json
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass
class Record:
    key: str                 # the sample's id in the data set
    where: str               # input file and row or member: every error and report line names it
    caption: str | None      # None: the source has none (or none that can be read) for this sample
    data: bytes | None       # the encoded image; None when missing
    problem: str = ""        # why the image or the caption is missing


@dataclass(frozen=True)
class Unit:
    name: str                                 # names the unit in the report and progress lines
    read: Callable[[], Iterator[Record]]      # the unit's records, in order


class BrokenInput(OSError):
    """An input file that cannot be read past some point (a truncated tar or parquet file)."""


def read_captions(path: Path, split: str | None) -> list[tuple[int, dict]]:
    """(line or row number, row) of a JSONL or CSV captions file, keeping only `split` when given.
    Rows need `file`; a missing or empty `caption` is left to the filters (a counted skip)."""
    try:
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
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    kept = []
    for n, row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected an object with 'file' and 'caption'")
        for key in ("file",) + (("split",) if split else ()):
            if not row.get(key):
                raise ValueError(f"{path}:{n}: missing '{key}'")
        if not split or row["split"] == split:
            kept.append((n, row))
    if not kept:
        raise ValueError(f"{path}: no rows" + (f" with split '{split}'" if split else ""))
    return kept


def folder_units(images_root: Path, captions: Path, split: str | None, rows_per_unit: int) -> list[Unit]:
    """An image folder + captions file, cut into units of `rows_per_unit` rows."""
    if not images_root.is_dir():
        raise FileNotFoundError(f"{images_root}: --images-root is not a folder")
    rows = read_captions(captions, split)
    units = []
    for start in range(0, len(rows), rows_per_unit):
        chunk = rows[start:start + rows_per_unit]
        name = f"{captions.name}:{chunk[0][0]}-{chunk[-1][0]}"
        units.append(Unit(name, partial(_folder_records, images_root, captions, chunk)))
    return units


def _folder_records(images_root: Path, captions: Path, rows: list[tuple[int, dict]]) -> Iterator[Record]:
    for n, row in rows:
        path = images_root / row["file"]
        key = str(row.get("id") or Path(row["file"]).with_suffix(""))
        where = f"{captions}:{n} ({path})"
        try:
            data, problem = path.read_bytes(), ""
        except OSError as e:
            data, problem = None, f"cannot read the image: {e.strerror or e}"
        yield Record(key, where, row.get("caption"), data, problem)


def tar_units(path: Path) -> list[Unit]:
    """One webdataset tar: one unit."""
    return [Unit(path.name, partial(tar_records, path))]


def tar_records(path: Path) -> Iterator[Record]:
    """Samples of a webdataset tar in img2dataset's layout: members `{key}.{ext}` next to each other,
    the image in jpg/jpeg/png/webp, the caption in `{key}.txt` or the "caption" field of `{key}.json`.
    A tar that cannot be read past some member ends with BrokenInput after the samples before it."""
    key, files, last = None, {}, "its start"
    try:
        with tarfile.open(path, "r|*") as tar:       # a stream: members in order, no seeking
            for member in tar:
                if not member.isfile():
                    continue
                folder, base = posixpath.split(member.name)
                stem, _, ext = base.partition(".")
                member_key = posixpath.join(folder, stem)
                if member_key != key and files:
                    yield _tar_record(path, key, files)
                    files = {}
                key = member_key
                files[ext.lower()] = tar.extractfile(member).read()
                last = member.name
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise BrokenInput(f"{path}: cannot be read after {last} ({e})") from None
    if files:
        yield _tar_record(path, key, files)


def _tar_record(path: Path, key: str, files: dict[str, bytes]) -> Record:
    where = f"{path}:{key}"
    caption, problems = None, []
    if "txt" in files:
        try:
            caption = files["txt"].decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{key}.txt is not UTF-8")
    elif "json" in files:
        try:
            meta = json.loads(files["json"])
            caption = meta.get("caption") if isinstance(meta, dict) else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            problems.append(f"{key}.json is not valid JSON")
    ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    if ext is None:
        return Record(key, where, caption, None, f"no {'/'.join(IMAGE_EXTENSIONS)} member")
    return Record(key, f"{where} ({key}.{ext})", caption, files[ext], "; ".join(problems))


def parquet_units(path: Path, image_column: str, caption_column: str, key_column: str | None) -> list[Unit]:
    """A parquet file, one unit per row group. The image column holds encoded bytes, or structs with
    a `bytes` field (a Hugging Face `datasets` Image column); without `key_column` a sample's id is
    `{file stem}-{row}`."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BrokenInput(f"{path}: reading parquet needs pyarrow: pip install 'greedy-growing-harness[ingest]'") from None
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, ValueError) as e:   # pyarrow's ArrowInvalid is a ValueError
        raise BrokenInput(f"{path}: not a readable parquet file ({e})") from None
    names = meta.schema.to_arrow_schema().names
    for what, column in (("--image-column", image_column), ("--caption-column", caption_column),
                         ("--key-column", key_column)):
        if column and column not in names:
            raise ValueError(f"{path}: no column '{column}' ({what}); the columns are {', '.join(names)}")
    units, first_row = [], 0
    for group in range(meta.num_row_groups):
        units.append(Unit(f"{path.name}#{group}", partial(_parquet_records, path, group, first_row, image_column,
                                                          caption_column, key_column)))
        first_row += meta.row_group(group).num_rows
    return units


def _parquet_records(path: Path, group: int, first_row: int, image_column: str, caption_column: str,
                     key_column: str | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    columns = [image_column, caption_column] + ([key_column] if key_column else [])
    try:
        table = pq.ParquetFile(path).read_row_group(group, columns=columns)
    except (OSError, ValueError) as e:
        raise BrokenInput(f"{path}: row group {group} cannot be read ({e})") from None
    images, captions = table.column(image_column).to_pylist(), table.column(caption_column).to_pylist()
    keys = table.column(key_column).to_pylist() if key_column else [None] * len(images)
    for i, (image, caption, key) in enumerate(zip(images, captions, keys)):
        row = first_row + i
        key = str(key) if key is not None else f"{path.stem}-{row:06d}"
        if isinstance(image, dict):          # datasets' Image feature: {"bytes": ..., "path": ...}
            image = image.get("bytes")
        where = f"{path} row {row} (id {key})"
        if not isinstance(image, bytes):
            yield Record(key, where, caption, None, f"column '{image_column}' holds no image bytes")
            continue
        yield Record(key, where, caption if isinstance(caption, str) else None, image)


def input_units(patterns: list[str], *, image_column: str = "image", caption_column: str = "caption",
                key_column: str | None = None) -> list[Unit]:
    """The units of every file matching the glob patterns (sorted per pattern, each file once):
    webdataset tars (.tar, .tar.gz, .tgz) and parquet files (.parquet)."""
    files: dict[Path, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"{pattern}: no input file matches")
        files.update(dict.fromkeys(map(Path, matches)))
    units = []
    for path in files:
        if path.name.endswith(TAR_SUFFIXES):
            units += tar_units(path)
        elif path.suffix == ".parquet":
            units += parquet_units(path, image_column, caption_column, key_column)
        else:
            raise ValueError(f"{path}: not a webdataset tar ({', '.join(TAR_SUFFIXES)}) or a .parquet file")
    return units
