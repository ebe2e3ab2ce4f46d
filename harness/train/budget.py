"""A stage whose budget is minutes plans its steps for the time it has.

With `train.time_limit_completes` the time limit, not `train.steps`, is the stage's end (the CPU
demo). Left alone such a stage would stop wherever the clock runs out: a cosine schedule planned
for `train.steps` would never decay, and the last weights would be those of a high learning rate.
So after a short measured stretch the stage estimates how many steps fit in the time left and ends
there: `train.steps` becomes that count (never more than configured), the learning-rate warm-up
takes at most a tenth of it, and the decay ends at it (never later than configured). The time limit still stops the stage if the estimate was
optimistic. The estimate is the slowest rank's, so every rank plans the same step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from harness.config import RunConfig
from harness.parallel.layout import max_over_ranks

MIN_STEPS = 10           # steps measured before planning (the first step, with its start-up, is left out)
MIN_FRACTION = 0.1       # ... and at least this share of the time limit
MARGIN = 0.95            # the share of the time left that the plan fills


@dataclass(frozen=True)
class Plan:
    step_s: float        # measured seconds per step (slowest rank)
    steps: int           # the stage's last step
    warmup_steps: int    # the learning-rate warm-up, at most a tenth of the planned steps
    decay_steps: int     # the step the learning rate reaches min_lr

    def describe(self, configured: int, minutes: float) -> str:
        fits = "all of" if self.steps >= configured else f"{self.steps:,} of"
        return (f"time budget: {self.step_s:.3f} s/step, so {fits} {configured:,} steps fit in {minutes:g} min; "
                f"the stage ends at step {self.steps:,}, its learning rate warming up over {self.warmup_steps:,} "
                f"steps and reaching min_lr at step {self.decay_steps:,}")


class TimeBudget:
    """Measures steps from the end of the first one and plans once (see the module docstring)."""

    def __init__(self, cfg: RunConfig, began: float):
        self.limit_s = cfg.train.time_limit_minutes * 60
        self.warmup = cfg.optim.warmup_steps
        self.began = began
        self.mark: tuple[int, float] | None = None     # (step, time) after the first step
        self.planned = False

    @classmethod
    def for_stage(cls, cfg: RunConfig, began: float) -> TimeBudget | None:
        t = cfg.train
        return cls(cfg, began) if t.time_limit_completes and t.time_limit_minutes > 0 else None

    def plan(self, step: int, configured_steps: int, decay_steps: int, now: float | None = None) -> Plan | None:
        """After `step`: the plan, once enough steps are measured (collective on that call), else None."""
        if self.planned:
            return None
        now = time.perf_counter() if now is None else now
        if self.mark is None:
            self.mark = (step, now)
            return None
        measured, spent = step - self.mark[0], now - self.mark[1]
        if measured < MIN_STEPS or now - self.began < MIN_FRACTION * self.limit_s:
            return None
        self.planned = True
        step_s = max_over_ranks(spent / measured)      # the slowest rank
        left = max(self.limit_s - (now - self.began), 0.0)
        steps = min(configured_steps, step + max(math.floor(MARGIN * left / step_s), 1))
        warmup = fitted_warmup(self.warmup, steps)
        return Plan(step_s, steps, warmup, min(decay_steps, max(steps, warmup + 1)))


def fitted_warmup(warmup: int, steps: int) -> int:
    """The configured warm-up, at most a tenth of `steps` (at least 1), so a short run still decays."""
    return min(warmup, max(steps // 10, 1))


