"""The loss continuity check at a stage boundary: do the loaded weights score what the source did,
and do they survive the first steps?

When a stage starts from a checkpoint (a resume, `train.init_from`, grow.py's step-0 checkpoint),
the loaded weights are scored before the first step on fixed samples - the stage's next global
batches, with their seeded noise and times, forward only - and the result is logged next to the
last loss the source logged. Two things warn, naming both numbers:

- the loaded weights score more than JUMP x the source's last loss: they are not what the source
  trained (the wrong family, the wrong checkpoint, keys loaded into the wrong place);
- the stage's first logged loss is more than JUMP x the loaded weights' score: the first steps
  threw the loaded weights away (an optimizer whose fp32 main copies predate the load writes them
  back at its first step).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

JUMP = 1.5


class ContinuityWarning(UserWarning):
    """The loss is far above what the loaded weights should give."""


class Continuity:
    """Scores the loaded weights once, then compares the stage's first logged loss with that score."""

    def __init__(self, start: Path, source_loss: float | None, *, rank: int):
        self.start, self.source_loss, self.rank = start, source_loss, rank
        self.loss: float | None = None

    def score(self, evaluate: Callable[[], float], samples: int, global_batch: int) -> dict:
        """Score the loaded weights with `evaluate` (one global batch's mean loss per call, collective)
        on at least `samples` samples; print, warn on a jump, return the fields the first log line
        carries. 64 samples keep the mean's noise near 15% of the loss, inside the 1.5x threshold."""
        batches = max(1, math.ceil(samples / global_batch))
        self.loss = sum(evaluate() for _ in range(batches)) / batches
        if self.rank == 0:
            source = f"{self.source_loss:.4f}" if self.source_loss is not None else "none logged (a step-0 checkpoint, or a stage that stopped before its first log line)"
            print(f"continuity: the loaded weights score loss {self.loss:.4f} on {batches * global_batch} fixed "
                  f"samples; the source's last logged loss: {source} ({self.start})", flush=True)
            if self.source_loss is not None and self.loss > JUMP * self.source_loss:
                self._warn(f"the loss jumped {self.loss / self.source_loss:.1f}x at the stage boundary: "
                           f"{self.loss:.4f} for the loaded weights vs {self.source_loss:.4f} logged at {self.start}; "
                           "the weights may not be the ones the source trained")
        return {"start_loss": self.loss, "source_loss": self.source_loss}

    def first_logged(self, loss: float, step: int) -> None:
        """Compare the stage's first logged loss with the loaded weights' score (once)."""
        if self.loss is not None and self.rank == 0 and loss > JUMP * self.loss:
            self._warn(f"the loss rose {loss / self.loss:.1f}x in the first steps from {self.start}: {self.loss:.4f} "
                       f"for the loaded weights, {loss:.4f} logged at step {step}; the first updates did not start "
                       "from the loaded weights")
        self.loss = None

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(message, ContinuityWarning, stacklevel=3)
