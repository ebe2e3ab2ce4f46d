"""Training runs of the claims experiments: stages with checkpoints along the way, and their compute.

Every stage runs in this process (harness.train.loop.train) for a fixed number of steps, with its
schedule decayed by its last step and a checkpoint every `every` steps (all kept), so a curve can be
scored afterwards. Training FLOPs per optimizer step are counted (FlopCounterMode) on one real step
of each stage's configuration, with frozen layers skipping their weight gradients; the compute of a
checkpoint is the sum over the stages that led to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.checkpoint import io
from harness.config import RunConfig, load
from harness.eval.flops import count_flops
from harness.growth.grow import grow
from harness.growth.rules import rule_for
from harness.parallel.layout import initialize_layout
from harness.train.loop import train
from harness.train.synthetic import synthetic_step


@dataclass(frozen=True)
class Stage:
    """One trained stage: its run directory, steps, FLOPs per step and the compute spent before it."""

    run: Path
    steps: int
    tflop_per_step: float
    tflop_before: float = 0.0

    def checkpoints(self) -> list[tuple[Path, float]]:
        """(checkpoint, cumulative TFLOP) of every checkpoint of the run, in step order."""
        found = sorted((io.read_meta(p)["step"], p) for p in self.run.glob("step_*") if (p / "meta.json").is_file())
        return [(p, self.tflop_before + step * self.tflop_per_step) for step, p in found]

    @property
    def tflop_after(self) -> float:
        return self.tflop_before + self.steps * self.tflop_per_step


def step_tflops(cfg: RunConfig, frozen: tuple[str, ...] = ()) -> float:
    """Training FLOPs of one optimizer step of `cfg` (counted on a real step, random data)."""
    step, _ = synthetic_step(cfg, initialize_layout(1, 1), frozen_prefixes=frozen)
    return count_flops(step) / 1e12


def stage_config(config: str | Path, run: Path, steps: int, every: int, seed: int, overrides: list[str]) -> RunConfig:
    """A stage of `steps` steps (schedule decayed by then), checkpointed every `every`, all kept,
    seeded by `seed` (weights, diffusion noise and data order)."""
    return load(config, [f"train.run_dir={run}", f"train.steps={steps}", f"optim.decay_steps={steps}",
                         f"train.ckpt_every_steps={every}", f"train.keep_checkpoints={steps // every + 2}",
                         f"train.seed={seed}", f"data.seed={seed}", "train.time_limit_minutes=0",
                         "train.sample_every_steps=0", "train.num_samples=0", *overrides])


def run_stage(cfg: RunConfig, tflop_before: float = 0.0, frozen: tuple[str, ...] = (),
              source: Path | None = None, tflop_per_step: float | None = None) -> Stage:
    """Train `cfg` (a finished run directory is kept as it is), grown from `source` first when given
    (growing writes the stage's step-0 checkpoint, the first point of its curve)."""
    run = Path(cfg.train.run_dir)
    if source is not None and not (run / io.LATEST).exists():
        grow(source, cfg, initialize_layout(cfg.parallel.tp, cfg.parallel.pp, cfg.train.seed))
    if not (run / io.LATEST).exists() or io.read_meta(io.resolve(run))["step"] < cfg.train.steps:
        train(cfg)
    per_step = step_tflops(cfg, frozen) if tflop_per_step is None else tflop_per_step  # counted once per stage
    return Stage(run, cfg.train.steps, per_step, tflop_before)


def carried(core: Path, grown_arch: str) -> tuple[str, ...]:
    """What the growth rule from a core run's architecture to `grown_arch` carries (and grow-frozen freezes)."""
    return rule_for(io.read_meta(io.resolve(core))["config"]["model"]["arch"], grown_arch).carry
