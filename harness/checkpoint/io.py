"""Checkpoint directories: atomic save, the `latest` pointer, self-describing meta.json, strict load.

    run_dir/
      latest                  text: the name of the last complete checkpoint
      step_0001234/           Megatron dist_checkpointing (torch_dist) + meta.json
      .tmp-step_0001240/      a save in progress (or interrupted): never read

A checkpoint is written under a temporary name and renamed when complete, then `latest` is
replaced atomically, so a crash mid-save leaves the last good checkpoint in place. Nothing in a
checkpoint is unpickled beyond what `torch.load(weights_only=True)` (torch's default) accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor

FORMAT_VERSION = 1
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the model; the message names it."""


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
        target = path / pointer.read_text().strip()
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
    """Versions recorded in every checkpoint."""
    from importlib.metadata import version
    return {"torch": torch.__version__, "megatron_core": version("megatron-core"),
            "harness": version("greedy-growing-harness")}


def save(run_dir: str | Path, step: int, sharded_state_dict: dict, meta: dict, keep: int = 2,
         files: dict[str, bytes] | None = None) -> Path:
    """Collectively write `sharded_state_dict` + meta.json (+ `files`, written under their names)
    as run_dir/step_NNNNNNN; return its path."""
    run_dir = Path(run_dir)
    final = run_dir / checkpoint_name(step)
    if (final / "meta.json").is_file():
        return final                                   # this exact step is already saved and complete
    tmp = run_dir / f".tmp-{final.name}"
    if _rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)         # leftover of an interrupted save
        tmp.mkdir()
    _barrier()
    dist_checkpointing.save(sharded_state_dict, str(tmp))
    _barrier()
    if _rank() == 0:
        meta = {"format_version": FORMAT_VERSION, "step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": versions(), **meta}
        for name, content in (files or {}).items():
            (tmp / name).write_bytes(content)
        write_text_atomic(tmp / "meta.json", json.dumps(meta, indent=2, sort_keys=True))
        os.rename(tmp, final)
        write_text_atomic(run_dir / LATEST, final.name + "\n")
        _prune(run_dir, keep)
    _barrier()
    return final


def _prune(run_dir: Path, keep: int) -> None:
    complete = sorted(p for p in run_dir.glob("step_*") if (p / "meta.json").is_file())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


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
    return {k: tuple(v.global_shape) for k, v in
            dist_checkpointing.load_tensors_metadata(str(ckpt_dir)).items()}


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
        problems.append(f"{len(missing)} missing from the checkpoint: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} in the checkpoint but not in the model: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with other shapes: {', '.join(mismatched)}")
    if problems:
        raise CheckpointError(f"{ckpt_dir}: does not match the model: " + "; ".join(problems))


def load(ckpt_dir: str | Path, sharded_state_dict: dict, families: tuple[str, ...]) -> dict:
    """Check keys and shapes, then load this rank's shards; returns the loaded (nested) state dict."""
    check_keys(ckpt_dir, sharded_state_dict, families)
    return dist_checkpointing.load(sharded_state_dict, str(ckpt_dir))
