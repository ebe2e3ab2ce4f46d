"""tools/claims.py end to end on the tiny model: both arms and the ablations trained, every checkpoint
scored, the compute of each point accounted for, the core-size sweep at equal FLOPs."""

import json

import pytest

from harness.cli.claims import main

SCORES = {"eval_loss", "fid", "top1", "top5", "real_top1", "tflop"}


@pytest.fixture(scope="module")
def growth(world, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("claims") / "growth"
    data = [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}", "model.size=tiny",
            "parallel.global_batch=4", "parallel.micro_batch=4", "train.matmul_precision=highest",
            "train.continuity_samples=4", "optim.warmup_steps=1"]
    assert main(["growth", "--out", str(out), "--seeds", "0", "--core-steps", "2", "--frozen-steps", "2",
                 "--finetune-steps", "2", "--every", "2", "--eval-num", "4", "--sample-num", "2",
                 "--sample-steps", "2", "--probe-px", "64", "--ablations", *data]) == 0
    return out, json.loads((out / "results.json").read_text()), data


def test_every_checkpoint_of_both_arms_and_the_ablations_is_scored(growth):
    out, results, _ = growth
    points = results["points"]
    by_arm = {}
    for p in points:
        assert SCORES <= set(p), p
        by_arm.setdefault(p["arm"], []).append((p["stage"], p["step"]))
    # a checkpoint every 2 steps; growing writes the grown stage's step 0
    assert by_arm["grown"] == [("core", 2), ("grow-frozen", 0), ("grow-frozen", 2), ("grow-finetune", 2)]
    assert set(by_arm) == {"grown", "scratch", "finetune lr", "no frozen phase", "default init"}
    assert by_arm["finetune lr"] == [("grow-finetune", 2)]                               # shares seed 0's frozen phase
    assert by_arm["no frozen phase"] == [("grow-finetune", 0), ("grow-finetune", 2), ("grow-finetune", 4)]
    assert by_arm["default init"] == [("grow-frozen", 0), ("grow-frozen", 2), ("grow-finetune", 2)]
    assert all("fid_to_core" in p for p in points if p["arm"] != "scratch" and p["stage"] != "core")
    for name in ("claim2.png", "claim3.png", "tables.md"):
        assert (out / name).stat().st_size > 0


def test_compute_is_cumulative_and_the_scratch_arm_matches_it(growth):
    _, results, _ = growth
    stages = results["runs"]["seed0"]
    core, frozen, finetune, scratch = stages
    assert frozen["tflop_before"] == pytest.approx(core["steps"] * core["tflop_per_step"])
    assert frozen["tflop_per_step"] < finetune["tflop_per_step"]                 # frozen layers: no weight grads
    grown_total = finetune["tflop_before"] + finetune["steps"] * finetune["tflop_per_step"]
    spent = scratch["steps"] * scratch["tflop_per_step"]
    assert grown_total <= spent < grown_total + scratch["tflop_per_step"]
    tflops = [p["tflop"] for p in results["points"] if p["arm"] == "grown"]
    assert tflops == sorted(tflops)


def test_a_rerun_trains_nothing_and_scores_the_same(growth, capsys):
    out, results, data = growth
    before = {p: p.stat().st_mtime_ns for p in out.rglob("step_*/metadata.json")}
    assert main(["growth", "--out", str(out), "--seeds", "0", "--core-steps", "2", "--frozen-steps", "2",
                 "--finetune-steps", "2", "--every", "2", "--eval-num", "4", "--sample-num", "2",
                 "--sample-steps", "2", "--probe-px", "64", *data]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("step_*/metadata.json")} == before
    again = json.loads((out / "results.json").read_text())["points"]
    first = [p["eval_loss"] for p in results["points"] if p["arm"] in ("grown", "scratch")]
    assert [p["eval_loss"] for p in again] == first


def test_sizes_train_for_equal_flops(world, tiny_data, tmp_path):
    data = [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}",
            "parallel.global_batch=4", "parallel.micro_batch=4", "train.matmul_precision=highest",
            "optim.warmup_steps=1"]
    assert main(["sizes", "--out", str(tmp_path), "--sizes", "small-128", "small", "--budget-tflop", "0.04",
                 "--points", "2", "--eval-num", "4", "--sample-num", "2", "--sample-steps", "2", "--probe-px", "64",
                 *data]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    runs = results["runs"]
    assert runs["small-128"]["steps"] > runs["small"]["steps"] >= 1
    for run in runs.values():                                  # rounded to whole steps
        assert abs(run["steps"] * run["tflop_per_step"] - 0.04) <= run["tflop_per_step"] / 2
    assert {p["arm"] for p in results["points"]} == {"small-128", "small"} and (tmp_path / "claim1.png").is_file()
