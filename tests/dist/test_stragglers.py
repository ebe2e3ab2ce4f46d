"""Stragglers under torchrun: each logging window gathers every rank's compute time, and rank 0 names a
rank slowed down on purpose (tests/dist/slow_rank.py)."""

import json

from launching import REPO, launch
from slow_rank import SLEEP_S

STEPS = 3


def test_a_slow_rank_is_named(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    args = [o for o in tiny_overrides if not o.startswith("train.run_dir=")] + [
        f"train.run_dir={run}", f"train.steps={STEPS}", "train.ckpt_every_steps=3", "train.continuity_samples=0",
        "train.peak_tflops=1"]
    proc = launch("torchrun", 2, ["tests/dist/slow_rank.py", *args], env={"PYTHONPATH": str(REPO)})
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    for line in lines:
        assert line["slowest_rank"] == 1
        assert line["rank_step_s_max"] >= SLEEP_S > line["rank_step_s_min"]       # rank 1 sleeps in each step
    named = [x for x in proc.stdout.splitlines() if "straggler: rank 1 computed" in x]
    assert len(named) == STEPS, proc.stdout
