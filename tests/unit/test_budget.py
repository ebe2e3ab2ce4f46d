"""A stage whose budget is minutes (train.time_limit_completes) ends, with its learning rate
decayed, where the time runs out; a rerun of it trains nothing more."""

import json

from harness.checkpoint import io
from harness.config import load
from harness.train.budget import MARGIN, TimeBudget
from harness.train.loop import train


def test_the_plan_fills_the_time_left_at_the_measured_rate():
    cfg = load(None, ["train.time_limit_minutes=1", "train.time_limit_completes=true", "optim.warmup_steps=5"])
    budget = TimeBudget.for_stage(cfg, began=0.0)
    assert budget.plan(1, 1000, 1000, now=2.0) is None              # the first step (start-up) is left out
    assert budget.plan(6, 1000, 1000, now=7.0) is None              # too few steps measured yet
    plan = budget.plan(12, 1000, 800, now=12.0)                      # 11 steps in 10 s
    left = 60.0 - 12.0
    assert abs(plan.step_s - 10 / 11) < 1e-9
    assert plan.steps == 12 + int(MARGIN * left / plan.step_s) and plan.decay_steps == plan.steps
    assert budget.plan(13, 1000, 800, now=13.0) is None              # planned once
    fast = TimeBudget.for_stage(cfg, began=0.0)
    fast.plan(1, 30, 20, now=0.1)
    assert fast.plan(20, 30, 20, now=6.1).steps == 30                # never beyond train.steps or the decay
    long_warmup = TimeBudget.for_stage(load(None, ["train.time_limit_minutes=1", "train.time_limit_completes=true",
                                                   "optim.warmup_steps=100"]), began=0.0)
    long_warmup.plan(1, 1000, 1000, now=1.0)
    short = long_warmup.plan(12, 1000, 1000, now=12.0)
    assert short.warmup_steps == short.steps // 10 and short.decay_steps == short.steps   # warm-up fits the plan
    assert TimeBudget.for_stage(load(None, ["train.time_limit_minutes=1"]), 0.0) is None


def test_a_time_budgeted_stage_decays_its_lr_by_its_end_and_a_rerun_trains_nothing(world, tiny_overrides,
                                                                                   tmp_path, capsys):
    run = tmp_path / "run"
    args = [*tiny_overrides, f"train.run_dir={run}", "train.steps=100000", "train.time_limit_minutes=0.2",
            "train.time_limit_completes=true", "optim.min_lr=1e-5", "train.continuity_samples=0"]
    outcome = train(load(None, args))
    out = capsys.readouterr().out
    assert "time budget:" in out and outcome.complete and 10 < outcome.step < 100000
    planned = int(out.split("the stage ends at step ")[1].split(",")[0].replace(" ", ""))
    assert planned >= outcome.step              # there, or a little before if a loaded machine slowed down
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    peak = load(None, args).optim.lr
    assert last["step"] == outcome.step and last["lr"] < 0.2 * peak       # decayed (min_lr at the planned end)
    assert io.read_meta(io.latest_checkpoint(run))["complete"]
    lines = (run / "log.jsonl").read_text().count("\n")
    again = train(load(None, args))
    assert again.complete and again.step == outcome.step and (run / "log.jsonl").read_text().count("\n") == lines
