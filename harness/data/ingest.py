"""Ingest: input units (harness.data.sources) -> one data set per stored resolution, over MPI ranks,
resumable, with a JSON report of everything skipped (harness.data.filters).

1. Scan. Rank r reads units r, r + size, ... and hashes each record's image bytes (BLAKE2b-128).
   Rank 0 gathers the hashes in unit order and marks each record that repeats an earlier id or
   image: the first in input order is kept, whatever the number of ranks.
2. Write. The same ranks decode, filter and crop each kept record of their units and resize it to
   every resolution it is at least as large as (all of them with `upsample`), write each
   resolution's samples of a unit as `shard-UUUUU-PPP.h5` in that resolution's folder, and journal
   the unit there (its shards and its part of the report).
3. Finish. Rank 0 writes one manifest per resolution listing the shards in unit order, and the
   merged report `ingest-report.json` beside the data sets.

The same sample has the same id at every resolution, so a high-resolution set is the subset of the
low-resolution one whose sources really are that large. A rerun with the same inputs and options
keeps each unit whose journal entries match and whose shards are intact, and redoes the rest.
The scan's index (about 100 bytes per record: 1 GB for 10 M records) is held by rank 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.captions import unknown_characters
from harness.data.filters import (
    DAMAGE,
    Policy,
    Report,
    Skip,
    check_caption,
    decode,
    stored_squares,
)
from harness.data.format import (
    FORMAT_VERSION,
    Manifest,
    ShardInfo,
    compression_options,
    write_shard,
)
from harness.data.mpi import RankProgress, on_all, on_root, rank_and_size
from harness.data.sources import BrokenInput, Record, Unit
from harness.data.writer import (
    finish,
    journal_read,
    journal_write,
    prepare,
    shard_intact,
)

REPORT_FILE = "ingest-report.json"


@dataclass(frozen=True)
class Options:
    policy: Policy
    samples_per_shard: int = 1024       # at the lowest resolution; higher ones hold about as many bytes
    compression: str | None = "blosc-lz4"
    tokenizer: str | None = None        # count the caption characters this tokenizer maps to unknown
    examples: int = 20                  # places listed per reason in the report
    overwrite: bool = False


@dataclass
class Result:
    folders: dict[int, Path]
    manifests: dict[int, Manifest]
    report: dict
    report_path: Path


def dataset_folders(out: Path, resolutions) -> dict[int, Path]:
    """Where each resolution's data set goes: `out` itself for one resolution, `out/<R>` for several."""
    return {resolutions[0]: out} if len(resolutions) == 1 else {r: out / str(r) for r in resolutions}


def shard_sizes(options: Options) -> dict[int, int]:
    """Samples per shard at each resolution: `samples_per_shard` at the lowest, as many bytes at the others."""
    low = options.policy.resolutions[0]
    return {r: max(1, options.samples_per_shard * low * low // (r * r)) for r in options.policy.resolutions}


def ingest(units: list[Unit], out: str | Path, options: Options, *, source: str = "", comm=None,
           progress: bool = True) -> Result:
    """Write the data sets of `units` under `out` (every rank calls it with the same arguments)."""
    return _Job(units, Path(out), options, source, comm, progress).run()


class _Job:
    def __init__(self, units: list[Unit], out: Path, options: Options, source: str, comm, progress: bool):
        policy = options.policy
        if list(policy.resolutions) != sorted(set(policy.resolutions)) or policy.resolutions[0] <= 0:
            raise ValueError(f"resolutions must be positive and distinct, got {list(policy.resolutions)}")
        if options.samples_per_shard <= 0 or not units:
            raise ValueError("nothing to ingest" if not units else
                             f"samples_per_shard must be positive, got {options.samples_per_shard}")
        compression_options(options.compression)   # an unknown compression fails before any work
        self.units, self.out, self.options, self.source, self.comm = units, out, options, source, comm
        self.progress = progress
        self.rank, self.size = rank_and_size(comm)
        self.mine = range(self.rank, len(units), self.size)
        self.folders = dataset_folders(out, policy.resolutions)
        self.sizes = shard_sizes(options)

    def run(self) -> Result:
        on_root(self.comm, lambda: [prepare(f, self.options.overwrite) for f in self.folders.values()])
        scans = on_all(self.comm, self._scan_mine)
        self.plan = on_root(self.comm, lambda: _plan({u: s for part in scans for u, s in part.items()}))
        parts = on_all(self.comm, self._write_mine)
        return on_root(self.comm, lambda: self._finish({u: w for part in parts for u, w in part.items()}))

    # 1. scan
    def _scan_mine(self) -> dict[int, tuple[list[str], list[bytes | None]]]:
        out = {}
        with RankProgress(self.comm, desc="scanning", unit="img", enabled=self.progress) as bar:
            for u in self.mine:
                keys, digests = [], []
                try:
                    for record in self.units[u].read():
                        keys.append(record.key)
                        digests.append(self._digest(record))
                        bar.update()
                except BrokenInput:
                    pass                               # counted by the write pass, which reads the same prefix
                out[u] = (keys, digests)
        return out

    def _digest(self, record: Record) -> bytes | None:
        """The hash deduplication compares, or None for a record the write pass skips anyway."""
        try:
            check_caption(record.caption, self.options.policy)
        except Skip:
            return None
        return hashlib.blake2b(record.data, digest_size=16).digest() if record.data is not None else None

    # 2. write
    def _write_mine(self) -> dict[int, dict]:
        tokenizer = self.options.tokenizer
        self.unknown = unknown_characters(tokenizer) if tokenizer else None
        out = {}
        with RankProgress(self.comm, sum(self.plan["counts"].values()), desc=f"writing {self.out}",
                          enabled=self.progress) as bar:
            for u in self.mine:
                out[u] = self._write_unit(u, bar)
        return out

    def _params(self, u: int) -> dict:
        o = self.options
        params = {"format_version": FORMAT_VERSION, "unit": self.units[u].name, "content": self.plan["content"][u],
                  "dropped": sorted(self.plan["drops"].get(u, {})), "policy": dataclasses.asdict(o.policy),
                  "sizes": self.sizes, "compression": o.compression, "source": self.source,
                  "tokenizer": o.tokenizer, "examples": o.examples}
        return json.loads(json.dumps(params))         # as the journal holds it (string keys, lists)

    def _write_unit(self, u: int, bar: RankProgress) -> dict:
        name, params = f"unit-{u:05d}", self._params(u)
        done = {r: journal_read(folder, name, params) for r, folder in self.folders.items()}
        if all(d is not None and all(shard_intact(self.folders[r], ShardInfo(**s)) for s in d["shards"])
               for r, d in done.items()):
            bar.update(self.plan["counts"][u])
            return {"shards": {r: d["shards"] for r, d in done.items()}, "report": done[self._low]["report"],
                    "kept": True}
        report = Report(self.options.examples)
        buffers = {r: [] for r in self.folders}
        shards = {r: [] for r in self.folders}

        def flush(r: int) -> None:
            if buffers[r]:
                path = self.folders[r] / f"shard-{u:05d}-{len(shards[r]):03d}.h5"
                info = write_shard(path, np.stack([b[0] for b in buffers[r]]), [b[1] for b in buffers[r]],
                                   [b[2] for b in buffers[r]], compression=self.options.compression,
                                   attrs={"source": self.source})
                shards[r].append(vars(info))
                buffers[r] = []

        drops = self.plan["drops"].get(u, {})
        try:
            for row, record in enumerate(self.units[u].read()):
                report.records += 1
                for r, image in self._prepare(record, drops.get(row), report).items():
                    buffers[r].append((image, record.caption, record.key))
                    if len(buffers[r]) == self.sizes[r]:
                        flush(r)
                bar.update()
        except BrokenInput as e:
            self._skip(report, Skip("broken_input", str(e)), self.units[u].name)
        for r in self.folders:
            flush(r)
        for r, folder in self.folders.items():
            journal_write(folder, name, {"shards": shards[r], "report": report.to_dict()}, params)
        return {"shards": shards, "report": report.to_dict(), "kept": False}

    @property
    def _low(self) -> int:
        return self.options.policy.resolutions[0]

    def _prepare(self, record: Record, drop: tuple[str, str] | None, report: Report) -> dict:
        """The record's squares per resolution (none if it is skipped)."""
        policy = self.options.policy
        try:
            if record.data is None:
                raise Skip("missing_image", record.problem)
            check_caption(record.caption, policy, record.problem)
            if drop is not None:
                raise Skip(*drop)
            squares, too_small_for = stored_squares(decode(record.data), policy)
        except Skip as s:
            self._skip(report, s, record.where)
            return {}
        report.store(squares, too_small_for, record.where)
        report.caption(record.caption, record.where, self.unknown(record.caption) if self.unknown else [])
        return squares

    def _skip(self, report: Report, skip: Skip, where: str) -> None:
        if self.options.policy.strict and skip.reason in DAMAGE:
            raise ValueError(f"{where}: {skip.detail} ({skip.reason}; --strict makes it an error)")
        report.skip(skip.reason, f"{where}: {skip.detail}")

    # 3. finish
    def _finish(self, written: dict[int, dict]) -> Result:
        order = sorted(written)
        report = Report.merged([written[u]["report"] for u in order], self.options.examples).to_dict()
        manifests, empty = {}, []
        for r, folder in self.folders.items():
            shards = [ShardInfo(**s) for u in order for s in written[u]["shards"][r]]
            if not shards:
                empty.append(r)
                continue
            manifests[r] = finish(folder, shards, resolution_px=r, source=self.source,
                                  compression=self.options.compression)
        report = {"source": self.source, "inputs": len(self.units),
                  "kept_from_earlier_run": sum(written[u]["kept"] for u in order),
                  "data_sets": {str(r): {"folder": str(f), "samples": manifests[r].num_samples if r in manifests else 0,
                                         "shards": len(manifests[r].shards) if r in manifests else 0}
                                for r, f in self.folders.items()},
                  "policy": dataclasses.asdict(self.options.policy), "tokenizer": self.options.tokenizer, **report}
        path = self.out / REPORT_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        if empty:
            raise ValueError(f"{self.folders[empty[0]]}: no sample is stored at {empty[0]} px (see {path}; "
                             f"--upsample stores smaller sources upsampled)")
        return Result(self.folders, manifests, report, path)


def _plan(scans: dict[int, tuple[list[str], list[bytes | None]]]) -> dict:
    """Rank 0: records that repeat an earlier id or image (in unit order), and each unit's record
    count and content hash (ids and image hashes, which the journal compares on a rerun)."""
    ids: set[str] = set()
    images: dict[bytes, str] = {}
    drops, counts, content = {}, {}, {}
    for u in sorted(scans):
        keys, digests = scans[u]
        h = hashlib.sha256()
        for row, (key, digest) in enumerate(zip(keys, digests)):
            h.update(key.encode("utf-8", "surrogatepass") + b"\0" + (digest or b"-") + b"\n")
            if digest is None:
                continue
            if key in ids:
                drops.setdefault(u, {})[row] = ("duplicate_id", f"id {key!r} was already used by an earlier sample")
            elif digest in images:
                drops.setdefault(u, {})[row] = ("duplicate_image", f"the same image bytes as id {images[digest]!r}")
            else:
                ids.add(key)
                images[digest] = key
        counts[u], content[u] = len(keys), h.hexdigest()
    return {"drops": drops, "counts": counts, "content": content}
