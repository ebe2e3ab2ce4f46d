"""Where a stage starts: the run directory's lock, its latest checkpoint (falling back past one that
cannot be read), or `train.init_from`, or nothing."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from harness.checkpoint import io
from harness.checkpoint.rundir import RunDirLocked, RunLock, unwritable_reason
from harness.checkpoint.stage import TrainingStage
from harness.checkpoint.state import TrainState


def from_rank0(value):
    """Rank 0's value on every rank (collective)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def hold_run_dir(run_dir: Path, rank: int) -> RunLock | None:
    """Create and lock the run directory on rank 0; every rank raises if that fails (one line)."""
    lock, problem = None, None
    if rank == 0:
        if (reason := unwritable_reason(run_dir)) is not None:
            problem = f"train.run_dir {run_dir}: not writable ({reason})"
        else:
            lock = RunLock(run_dir)
            try:
                if note := lock.acquire():
                    print(f"warning: {note}", file=sys.stderr, flush=True)
            except RunDirLocked as e:
                problem, lock = str(e), None
    problem = from_rank0(problem)
    if problem:
        raise RunDirLocked(problem)
    return lock


@dataclass
class Start:
    state: TrainState
    checkpoint: Path | None          # what the stage was loaded from
    resumed: bool                    # from its own run directory (full state) rather than init_from
    protect: tuple[Path, ...] = ()   # a checkpoint fallen back to: pruning keeps it


def load_start(stage: TrainingStage, run_dir: Path, init_from: str) -> Start:
    """Restore the run directory's latest readable checkpoint, else start from init_from's weights,
    else from scratch. An unreadable checkpoint is renamed `corrupt-step_N` (kept for inspection)
    and the previous one taken, loudly; the one fallen back to is protected from pruning. One that
    this config cannot use (io.IncompatibleCheckpoint) is left as it is and the error raised."""
    candidate = from_rank0(_latest_name(run_dir))
    fell_back = False
    while candidate is not None:
        ckpt = run_dir / candidate
        problems = from_rank0(io.verify(ckpt) if stage.layout.rank == 0 else None)
        if not problems:
            try:
                state = stage.restore(ckpt)
                return Start(state, ckpt, True, (ckpt,) if fell_back else ())
            except io.IncompatibleCheckpoint:
                raise                          # readable; the config is what to fix
            except io.CheckpointError as e:
                problems = [str(e)]
        candidate = from_rank0(_fall_back(run_dir, ckpt, problems) if stage.layout.rank == 0 else None)
        fell_back = True
        if dist.is_initialized():
            dist.barrier()
    if fell_back:
        raise io.CheckpointError(f"{run_dir}: no checkpoint there can be read; see the warnings above")
    if init_from:
        source = io.resolve(init_from)
        return Start(stage.load_weights(source), source, False)
    return Start(TrainState(), None, False)


def start_candidate(run_dir: Path, init_from: str) -> Path | None:
    """The checkpoint a stage will start from, for what must be known before its stage is built
    (the frozen set, the bundled tokenizer): `latest` (or the newest complete one before it, if it
    is incomplete), else init_from, else None."""
    name = _latest_name(run_dir)
    if name is not None:
        ckpt = run_dir / name
        return ckpt if (ckpt / "meta.json").is_file() else io.previous_checkpoint(run_dir, ckpt)
    return io.resolve(init_from) if init_from else None


def _latest_name(run_dir: Path) -> str | None:
    """The name `latest` holds (checked to be a checkpoint name), or None."""
    pointer = run_dir / io.LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not io.NAME.fullmatch(name):
        raise io.CheckpointError(f"{pointer}: holds {name[:80]!r}, not a checkpoint name like step_0000100")
    return name


def _fall_back(run_dir: Path, bad: Path, problems: list[str]) -> str | None:
    """Rank 0: set the unreadable checkpoint aside, point `latest` at the previous complete one."""
    previous = io.previous_checkpoint(run_dir, bad)
    print(f"WARNING: {bad} cannot be read: {'; '.join(problems)}\nWARNING: "
          + (f"falling back to {previous.name}; the unreadable one is kept as corrupt-{bad.name}"
             if previous else "no earlier complete checkpoint to fall back to"), file=sys.stderr, flush=True)
    if bad.exists():
        os.rename(bad, bad.with_name(f"corrupt-{bad.name}"))
    if previous is None:          # `latest` stays as it is: a rerun must not silently start from scratch
        return None
    io.set_latest(run_dir, previous)
    return previous.name
