"""Checkpoint directories: atomic save, the `latest` pointer, self-describing meta.json, strict load.

    run_dir/
      latest                  text: the name of the last complete checkpoint
      step_0001234/           Megatron dist_checkpointing (torch_dist) + meta.json
      .tmp-step_0001240/      a save in progress (or interrupted): never read

A checkpoint is written under a temporary name and renamed when complete, then `latest` is
replaced atomically, so a crash mid-save leaves the last good checkpoint in place. A save never
skips: a `step_N` left by another run (a rerun after a rollback) is replaced, and `latest` always
ends on what this run wrote. Pruning deletes only older checkpoints of the same run (meta.json
`run_id`), never the target of `latest`, the checkpoint just written or one a resume fell back to.
Nothing in a checkpoint is unpickled beyond what `torch.load(weights_only=True)` accepts: torch's
`.metadata` goes through a restricted unpickler (harness/checkpoint/safe_pickle.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from torch.distributed.checkpoint import FileSystemReader

from harness.checkpoint import safe_pickle, writer_queue

safe_pickle.install()

FORMAT_VERSION = 1
LATEST = "latest"
NAME = re.compile(r"step_\d{7,}")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the model; the message names it."""


class IncompatibleCheckpoint(CheckpointError):
    """A readable checkpoint that this run's config cannot use (another frozen text encoder, another
    `diffusion.prediction`): the config is what to fix, so a resume never sets the checkpoint aside."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never a partial one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory whose `latest` names one."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    pointer = path / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        if not NAME.fullmatch(name):      # a name, not a path: `latest` cannot point outside its folder
            raise CheckpointError(f"{pointer}: holds {name[:80]!r}, not a checkpoint name like step_0000100")
        target = path / name
        if not (target / "meta.json").is_file():
            raise CheckpointError(f"{pointer}: points to {target.name}, which is not a complete checkpoint")
        return target
    raise CheckpointError(f"{path}: neither a checkpoint (no meta.json) nor a run directory with `{LATEST}`")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The last complete checkpoint of a run directory, or None if it has none yet."""
    if not (Path(run_dir) / LATEST).is_file():
        return None
    return resolve(run_dir)


def read_meta(ckpt_dir: str | Path) -> dict:
    """meta.json of a checkpoint, with its format version checked."""
    path = Path(ckpt_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {ckpt_dir} is not a complete checkpoint") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta.get('format_version')!r}, this harness reads {FORMAT_VERSION}")
    return meta


def versions() -> dict:
    """Versions recorded in every checkpoint ("source tree" for a harness run from a checkout that
    was not pip-installed, e.g. with PYTHONPATH)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        harness = version("greedy-growing-harness")
    except PackageNotFoundError:
        harness = "source tree"
    return {"torch": torch.__version__, "megatron_core": version("megatron-core"), "harness": harness}


def size_bytes(ckpt: str | Path) -> int:
    """Bytes of a checkpoint directory's files (what a copy of it moves)."""
    return sum(f.stat().st_size for f in Path(ckpt).iterdir() if f.is_file())


def save(run_dir: str | Path, step: int, sharded_state_dict: dict, meta: dict, keep: int = 2,
         files: dict[str, bytes] | None = None, protect: tuple[Path, ...] = (),
         background: AsyncCallsQueue | None = None, amend: Callable[[Path], object] | None = None) -> Path:
    """Collectively write `sharded_state_dict` + meta.json (+ `files`, written under their names)
    as run_dir/step_NNNNNNN, point `latest` at it and prune; return its path. `meta` holds the
    run_id that pruning goes by; `protect` lists checkpoints pruning must keep; `amend` runs on
    rank 0 on the written folder before it is published (growing splices the carried core in).

    With `background` (Megatron's AsyncCallsQueue) the shards are written by a background process
    and this returns at once: meta.json, the rename, `latest` and pruning happen in the request's
    finalisation, which Megatron runs on every rank only after every rank's writer has finished
    (`background.maybe_finalize_async_calls`); until then `latest` stays on the previous checkpoint."""
    run_dir = Path(run_dir)
    final = run_dir / checkpoint_name(step)
    tmp = _begin(run_dir, final) if _rank() == 0 else run_dir / f".tmp-{final.name}"
    _barrier()
    meta = {"format_version": FORMAT_VERSION, "step": step, "versions": versions(), **meta}
    writer_queue.start()

    def complete() -> None:
        if _rank() == 0:
            if amend is not None:
                amend(tmp)
            for name, content in (files or {}).items():
                (tmp / name).write_bytes(content)
            _publish(tmp, final, meta, keep, protect)
        _barrier()

    if background is None:
        dist_checkpointing.save(sharded_state_dict, str(tmp))
        _barrier()
        complete()
    else:
        request = dist_checkpointing.save(sharded_state_dict, str(tmp), async_sharded_save=True)
        request.add_finalize_fn(complete)
        background.schedule_async_request(request)
    return final


def copy_checkpoint(source: Path, run_dir: str | Path, meta: dict, keep: int = 2) -> Path:
    """In this process: the files of checkpoint `source` with `meta` as meta.json, written as run_dir's
    checkpoint of the same step like a save (temporary name, rename, `latest`, pruning)."""
    final = Path(run_dir) / checkpoint_name(meta["step"])
    tmp = _begin(Path(run_dir), final)
    for f in Path(source).iterdir():
        if f.is_file() and f.name != "meta.json":
            shutil.copyfile(f, tmp / f.name)
    _publish(tmp, final, meta, keep)
    return final


def _begin(run_dir: Path, final: Path) -> Path:
    """The empty temporary folder a checkpoint is written into (never over `latest`'s target)."""
    latest = latest_checkpoint(run_dir) if (run_dir / LATEST).is_file() else None
    if latest is not None and latest.name == final.name:
        raise CheckpointError(f"{final}: is the run's latest checkpoint; a save may not replace it")
    tmp = run_dir / f".tmp-{final.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)         # leftover of an interrupted save
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, final: Path, meta: dict, keep: int, protect: tuple[Path, ...] = ()) -> None:
    """meta.json last, then the rename, then `latest`, then pruning: a kill at any point leaves the
    last good checkpoint in place."""
    stamped = {**meta, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_text_atomic(tmp / "meta.json", json.dumps(stamped, indent=2, sort_keys=True))
    _replace_dir(tmp, final)
    write_text_atomic(final.parent / LATEST, final.name + "\n")
    _prune(final.parent, final, meta.get("run_id"), keep, protect)


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename src to dst; a dst left by another run (not `latest`'s target) is moved aside, then deleted."""
    if dst.exists():
        aside = dst.with_name(f".replaced-{dst.name}")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(dst, aside)
        os.rename(src, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(src, dst)
    for leftover in dst.parent.glob(".deleting-*"):       # of a prune that was killed
        shutil.rmtree(leftover, ignore_errors=True)


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def _prune(run_dir: Path, written: Path, run_id: str | None, keep: int, protect: tuple[Path, ...]) -> None:
    """Keep the `keep` newest checkpoints of this run up to `written`; delete older ones of this run.
    Checkpoints of other runs, newer than `written` (a rolled-back future) or protected stay."""
    kept = {p.resolve() for p in (written, *protect)}
    older = []
    for p in run_dir.glob("step_*"):
        if not NAME.fullmatch(p.name) or p.resolve() in kept or _step_of(p) >= _step_of(written):
            continue
        try:
            mine = read_meta(p).get("run_id") == run_id
        except CheckpointError:
            continue                                   # incomplete or foreign: not ours to delete
        if mine:
            older.append(p)
    for old in sorted(older, key=_step_of)[:max(len(older) - (keep - 1), 0)]:
        _delete_dir(old)


def _delete_dir(path: Path) -> None:
    """Rename, then delete: a kill in the middle never leaves a half-deleted checkpoint that looks whole."""
    doomed = path.with_name(f".deleting-{path.name}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def previous_checkpoint(run_dir: str | Path, before: Path) -> Path | None:
    """The newest complete checkpoint of run_dir older than `before` (for falling back), or None."""
    older = [p for p in Path(run_dir).glob("step_*") if NAME.fullmatch(p.name) and _step_of(p) < _step_of(before)
             and (p / "meta.json").is_file()]
    return max(older, key=_step_of, default=None)


def set_latest(run_dir: str | Path, ckpt: Path) -> None:
    """Point `latest` at a checkpoint of run_dir."""
    write_text_atomic(Path(run_dir) / LATEST, ckpt.name + "\n")


def verify(ckpt_dir: str | Path, tensors: bool = False) -> list[str]:
    """Problems of a checkpoint, one line each naming the file: meta.json, torch's .metadata, every
    shard file there and long enough for what the metadata says it holds, and (`tensors`) every
    tensor read back. Empty when it is whole. In this process alone."""
    ckpt = Path(ckpt_dir)
    try:
        read_meta(ckpt)
    except CheckpointError as e:
        return [str(e)]
    try:
        metadata = dcp_metadata(ckpt)
    except CheckpointError as e:
        return [str(e)]
    ends: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    problems = []
    for name, end in sorted(ends.items()):
        path = ckpt / name
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            problems.append(f"{path}: missing (the checkpoint's metadata lists it)")
        elif size < end:
            problems.append(f"{path}: truncated ({size:,} bytes, the metadata needs {end:,})")
    if tensors and not problems:
        try:
            read_tensors(ckpt)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{ckpt}: a tensor cannot be read ({type(e).__name__}: {_one_line(e)})")
    return problems


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def dcp_metadata(ckpt: str | Path):
    """torch's `.metadata` of a checkpoint (restricted unpickler); CheckpointError naming the file."""
    try:
        return FileSystemReader(str(ckpt)).read_metadata()
    except Exception as e:  # noqa: BLE001 - a crafted, foreign or damaged .metadata
        raise CheckpointError(_unreadable_metadata(Path(ckpt), e)) from e


def _unreadable_metadata(ckpt: Path, e: Exception) -> str:
    if isinstance(e, safe_pickle.UnsafeCheckpointError):
        return str(e)                                   # names the file and the refused global
    return f"{ckpt / '.metadata'}: cannot be read ({type(e).__name__}: {_one_line(e)})"


def read_tensors(ckpt_dir: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Full (unsharded) tensors of a checkpoint whose keys start with `prefix`, keys without it, in
    this process alone: for inspection, comparison and release export, not for training."""
    meta = {k: v for k, v in dist_checkpointing.load_tensors_metadata(str(ckpt_dir)).items() if k.startswith(prefix)}
    request = {k: ShardedTensor.from_rank_offsets(k, torch.empty(v.global_shape, dtype=v.dtype), replica_id=0)
               for k, v in meta.items()}
    loaded = dist_checkpointing.load(request, str(ckpt_dir))
    return {k.removeprefix(prefix): loaded[k] for k in request}


def stored_shapes(ckpt_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Global shape of every tensor stored in a checkpoint, read from its metadata only."""
    try:
        stored = dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
    except Exception as e:  # noqa: BLE001 - a crafted, foreign or damaged .metadata
        raise CheckpointError(_unreadable_metadata(Path(ckpt_dir), e)) from e
    return {k: tuple(v.global_shape) for k, v in stored.items()}


def check_keys(ckpt_dir: str | Path, sharded_state_dict: dict, families: tuple[str, ...]) -> None:
    """Raise unless this model matches the checkpoint exactly within `families` (key prefixes).

    Every requested key must be stored with the same global shape, and every stored key of a
    requested family must be requested by some rank (pipeline stages request disjoint subsets).
    """
    stored = stored_shapes(ckpt_dir)
    requested = {v.key: tuple(v.global_shape) for v in nested_values(sharded_state_dict) if isinstance(v, ShardedTensor)}
    everyone = [set(requested)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, set(requested))
    union = set().union(*everyone)
    missing = sorted(k for k in requested if k not in stored)
    unexpected = sorted(k for k in stored if k.startswith(families) and k not in union)
    mismatched = sorted(f"{k} {stored[k]} vs model {s}" for k, s in requested.items() if k in stored and stored[k] != s)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing from the checkpoint: {_some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} in the checkpoint but not in the model: {_some(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with other shapes: {_some(mismatched)}")
    if problems:
        raise CheckpointError(f"{ckpt_dir}: does not match the model: " + "; ".join(problems))


def _some(items: list[str], shown: int = 6) -> str:
    """The first few of a sorted list, and how many more."""
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f" and {more} more" if more > 0 else "")


def load(ckpt_dir: str | Path, sharded_state_dict: dict, families: tuple[str, ...]) -> dict:
    """Check keys and shapes, then load this rank's shards; returns the loaded (nested) state dict.
    A checkpoint that cannot be read is a CheckpointError naming it and the bad file."""
    try:
        check_keys(ckpt_dir, sharded_state_dict, families)
        return dist_checkpointing.load(sharded_state_dict, str(ckpt_dir))
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - turned into one error that names the file
        found = verify(ckpt_dir) if _rank() == 0 else []
        detail = "; ".join(found) or f"{type(e).__name__}: {_one_line(e)}"
        raise CheckpointError(f"{ckpt_dir}: cannot be loaded: {detail}") from e
