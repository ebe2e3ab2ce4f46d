"""The paper's three claims as re-runnable experiments on the emoji data (tools/claims.py runs them).

- `growth` (claims 2 and 3): per seed, arm A grows a core (core -> grow -> grow-frozen ->
  grow-finetune, configs/claims/*) and arm B trains the grown architecture from scratch for the same
  counted training FLOPs. Every checkpoint along the way is scored (harness/experiments/score.py),
  so each arm is a curve against cumulative compute. Ablations on seed 0's core: the fine-tune
  learning rate, no frozen phase, the default initialisation of the new levels. Claim 3 reads the
  same runs: at each stage boundary and along fine-tuning, the alignment, the eval loss and the FID
  between the grown model's samples (downsampled) and the core's own.
- `sizes` (claim 1): cores of several sizes at the same resolution, each trained for the same FLOPs,
  scored along the way.
Results go to OUT/results.json; the plots are written by harness/experiments/plots.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.config import load
from harness.experiments.runs import (
    Stage,
    carried,
    run_stage,
    stage_config,
    step_tflops,
)
from harness.experiments.score import Scorer
from harness.train.budget import fitted_warmup

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "claims"   # this checkout's
STAGE_CONFIGS = {"core": "core-32.yaml", "grow-frozen": "grow-frozen-64.yaml", "grow-finetune": "grow-finetune-64.yaml"}


def config(stage: str) -> Path:
    """The claims config of a stage (configs/claims/<stage>-<px>.yaml)."""
    return CONFIGS / STAGE_CONFIGS[stage]


@dataclass
class GrowthSettings:
    out: Path
    seeds: list[int]
    core_steps: int
    frozen_steps: int
    finetune_steps: int
    every: int
    finetune_lr_ablation: float
    ablations: bool
    overrides: list[str]


def _cfg(name: str, s: GrowthSettings, run: Path, steps: int, seed: int, extra: list[str] = (), every: int = 0):
    return stage_config(config(name), run, steps, every or s.every, seed, [*s.overrides, *extra])


def arm_a(s: GrowthSettings, seed: int, root: Path, core: Stage | None = None, frozen: Stage | None = None,
          finetune_lr: float | None = None, frozen_steps: int | None = None, extra: list[str] = ()) -> list[Stage]:
    """Core -> grow-frozen (none when frozen_steps is 0) -> grow-finetune; a given core or frozen
    stage is reused (the ablations share seed 0's)."""
    core = core or run_stage(_cfg("core", s, root / "core", s.core_steps, seed))
    frozen_steps = s.frozen_steps if frozen_steps is None else frozen_steps
    stages = [core]
    if frozen_steps:
        cfg = _cfg("grow-frozen", s, root / "grow-frozen", frozen_steps, seed, list(extra))
        stages.append(frozen or run_stage(cfg, core.tflop_after, carried(core.run, cfg.model.arch), source=core.run))
    lr = [f"optim.lr={finetune_lr}", f"optim.min_lr={finetune_lr / 10}"] if finetune_lr else []
    steps = s.finetune_steps + (s.frozen_steps - frozen_steps)
    init = [f"train.init_from={stages[-1].run}"] if frozen_steps else ["train.init_from="]
    cfg = _cfg("grow-finetune", s, root / "grow-finetune", steps, seed, [*init, *lr, *extra])
    stages.append(run_stage(cfg, stages[-1].tflop_after, source=None if frozen_steps else core.run))
    return stages


def arm_b(s: GrowthSettings, seed: int, root: Path, budget_tflop: float, points: int) -> Stage:
    """The grown architecture from scratch, with the core's learning rate, for `budget_tflop`."""
    core = load(config("core"), s.overrides).optim
    probe = _cfg("grow-finetune", s, root / "scratch", 1, seed, ["train.init_from="], every=1)
    per_step = step_tflops(probe)
    steps = math.ceil(budget_tflop / per_step)
    extra = ["train.init_from=", f"optim.lr={core.lr}", f"optim.min_lr={core.min_lr}",
             f"optim.warmup_steps={fitted_warmup(core.warmup_steps, steps)}"]
    return run_stage(_cfg("grow-finetune", s, root / "scratch", steps, seed, extra, every=max(1, steps // points)),
                     tflop_per_step=per_step)


def score_curve(scorer: Scorer, stages: list[Stage], arm: str, seed: int, core_samples=None) -> tuple[list, object]:
    """Scores of every checkpoint of `stages`, and the samples of the last core checkpoint (given,
    or found among them); grown checkpoints are also scored against those (Scorer.against_core)."""
    points = []
    for stage in stages:
        found = stage.checkpoints()
        for k, (ckpt, tflop) in enumerate(found):
            score, samples = scorer.score(ckpt)
            score.update(arm=arm, seed=seed, tflop=tflop)
            if score["stage"] == "core":
                score["top1_at_core_px"] = score["top1"]
                core_samples = samples if k == len(found) - 1 else core_samples
            elif core_samples is not None:
                score.update(scorer.against_core(samples, core_samples))
            points.append(score)
            print(f"[claims] {arm} seed {seed} {score['stage']} step {score['step']}: {tflop:.1f} TFLOP, "
                  f"eval loss {score['eval_loss']:.4f}, FID {score['fid']:.1f}, top-1 {score['top1']:.3f}", flush=True)
    return points, core_samples


def growth(s: GrowthSettings, scorer: Scorer) -> dict:
    """Claims 2 and 3: both arms for every seed (and the ablations on seed 0), every checkpoint scored."""
    points, runs = [], {}
    for seed in s.seeds:
        root = s.out / f"seed{seed}"
        a = arm_a(s, seed, root)
        b = arm_b(s, seed, root, a[-1].tflop_after, (s.frozen_steps + s.finetune_steps) // s.every)
        runs[f"seed{seed}"] = [asdict(x) for x in (*a, b)]
        grown, core_samples = score_curve(scorer, a, "grown", seed)
        points += grown + score_curve(scorer, [b], "scratch", seed)[0]
        if s.ablations and seed == s.seeds[0]:
            variants = {"finetune lr": dict(frozen=a[1], finetune_lr=s.finetune_lr_ablation),
                        "no frozen phase": dict(frozen_steps=0),
                        "default init": dict(extra=["model.zero_init=false"])}
            for name, kw in variants.items():
                root = s.out / "ablations" / name.replace(" ", "-")
                stages = arm_a(s, seed, root, core=a[0], **kw)
                runs[name] = [asdict(x) for x in stages]
                points += score_curve(scorer, [x for x in stages if root in x.run.parents], name, seed, core_samples)[0]
    return {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()},
            "runs": runs, "points": points}


def sizes(out: Path, names: list[str], budget_tflop: float, points: int, seed: int, overrides: list[str],
          scorer: Scorer) -> dict:
    """Claim 1: each core size trained for `budget_tflop` at configs/claims/core-32.yaml's settings."""
    results, runs = [], {}
    for name in names:
        extra = [f"model.size={name}", *overrides]
        fps = step_tflops(stage_config(config("core"), out / name, 1, 1, seed, extra))
        steps = max(1, round(budget_tflop / fps))
        stage = run_stage(stage_config(config("core"), out / name, steps, max(1, steps // points), seed, extra),
                          tflop_per_step=fps)
        runs[name] = asdict(stage)
        for ckpt, tflop in stage.checkpoints():
            score, _ = scorer.score(ckpt)
            score.update(arm=name, seed=seed, tflop=tflop)
            results.append(score)
            print(f"[claims] size {name} step {score['step']}: {tflop:.1f} TFLOP, eval loss {score['eval_loss']:.4f}, "
                  f"FID {score['fid']:.1f}, top-1 {score['top1']:.3f}", flush=True)
    return {"settings": {"sizes": names, "budget_tflop": budget_tflop, "seed": seed, "overrides": overrides},
            "runs": runs, "points": results}
