"""When a stage stops, and how it ends: the one decision the loop asks after every step.

Stop requests come from the scheduler as signals (harness/train/signals.py) and from the time
limit; every rank must take the same decision, so the inputs are agreed on collectively first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.distributed as dist

from harness.config import TrainConfig
from harness.parallel.layout import device

EXIT_STOPPED = 3     # the stage stopped before its end: resume by running the same command


class Stop(enum.Enum):
    NONE = "none"                # keep training
    FINISHED = "finished"        # train.steps reached
    TIME_LIMIT = "time limit"    # train.time_limit_minutes reached
    SIGUSR1 = "SIGUSR1"          # Slurm's time limit is near: checkpoint, requeue (train.requeue), exit
    SIGTERM = "SIGTERM"          # preemption or scancel: checkpoint, exit


@dataclass(frozen=True)
class Decision:
    stop: Stop
    checkpoint: bool             # write a checkpoint of this step


def decide(step: int, t: TrainConfig, out_of_time: bool, signal: str | None) -> Decision:
    """What to do after `step`: every stop checkpoints; otherwise every ckpt_every_steps."""
    if signal == "SIGTERM":                       # no time left: outranks everything else
        return Decision(Stop.SIGTERM, True)
    if signal == "SIGUSR1":
        return Decision(Stop.SIGUSR1, True)
    if step >= t.steps:
        return Decision(Stop.FINISHED, True)
    if out_of_time:
        return Decision(Stop.TIME_LIMIT, True)
    return Decision(Stop.NONE, step % t.ckpt_every_steps == 0)


def complete(stop: Stop, t: TrainConfig) -> bool:
    """Whether a stage that stopped this way is done (a chain's next stage may start from it)."""
    return stop is Stop.FINISHED or (stop is Stop.TIME_LIMIT and t.time_limit_completes)


def agree(out_of_time: bool, signal: str | None) -> tuple[bool, str | None]:
    """The stop inputs every rank acts on: true on all ranks if true on any (collective)."""
    flags = torch.tensor([float(out_of_time), float(signal == "SIGUSR1"), float(signal == "SIGTERM")],
                         device=device())                # NCCL reduces device tensors only
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    time_up, usr1, term = (bool(x) for x in flags.tolist())
    return time_up, "SIGTERM" if term else "SIGUSR1" if usr1 else None
