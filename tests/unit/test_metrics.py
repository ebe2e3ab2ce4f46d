"""Metrics where users look: log.jsonl, TensorBoard events (read back), the profiler window, W&B offline;
and a run's losses are the same with every measurement on as with them off."""

import contextlib
import io
import json

import pytest
from invariants import max_change, weights
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness.config import ConfigError, load, profile_window
from harness.train.loop import train
from harness.train.step import StepRunner

STEPS = 4
FIELDS = ("loss", "lr", "grad_norm", "images_per_s", "tflops", "mfu", "data_wait_frac", "peak_mem_gib",
          "rank_step_s_min", "rank_step_s_max", "slowest_rank")


def _args(tiny_data, run_dir, *extra):
    return [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}",
            f"train.run_dir={run_dir}", "model.size=tiny", "parallel.global_batch=8", "parallel.micro_batch=4", "train.num_samples=2",
            "diffusion.sample_steps=2", "optim.warmup_steps=0", "train.matmul_precision=highest",
            f"train.steps={STEPS}", "train.log_every_steps=2", "train.ckpt_every_steps=2", "train.sample_every_steps=2",
            *extra]


def _log(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(world, tiny_data, tmp_path_factory):
    """The same run with every measurement on (TensorBoard, FLOP counting, measured peak, a profiler
    window over steps 2-3) and with them off (FLOPs not counted, no TensorBoard, no profile). No
    warm-up: the counted first step updates the weights."""
    on, off = tmp_path_factory.mktemp("metrics_on"), tmp_path_factory.mktemp("metrics_off")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train(load(None, _args(tiny_data, on / "run", "train.profile_steps=2:4")))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StepRunner, "count_microbatch_flops", lambda self, microbatches: 0)
        train(load(None, _args(tiny_data, off / "run", "train.tensorboard=false", "train.peak_tflops=1")))
    return on / "run", off / "run", printed.getvalue()


def test_losses_are_identical_with_and_without_metrics(runs):
    on, off, _ = runs
    assert [x["loss"] for x in _log(on)] == [x["loss"] for x in _log(off)]
    assert max_change(weights(on), weights(off)) == 0
    assert not (off / "tensorboard").exists() and not (off / "profile").exists()


def test_log_lines_carry_the_window_measurements(runs):
    on, _, printed = runs
    lines = _log(on)
    assert [x["step"] for x in lines] == [2, 4]
    for line in lines:
        assert all(key in line for key in FIELDS), sorted(line)
        assert line["tflops"] > 0 and 0 < line["mfu"] and 0 <= line["data_wait_frac"] < 1 and line["peak_mem_gib"] > 0
        assert line["slowest_rank"] == 0 and line["rank_step_s_min"] == line["rank_step_s_max"] > 0
    assert lines[1]["save_s"] > 0                           # step 2's checkpoint, with the next line
    assert "TFLOP/s" in printed and "mfu" in printed


def test_tensorboard_events_hold_scalars_and_sample_grids(runs):
    on, _, _ = runs
    events = EventAccumulator(str(on / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "perf/images_per_s", "perf/tflops", "perf/mfu",
                "perf/data_wait_frac", "perf/peak_mem_gib", "perf/rank_step_s_max", "checkpoint/save_s"):
        assert [e.step for e in events.Scalars(tag)] == [2, 4], tag
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([x["loss"] for x in _log(on)])
    assert "samples" in tags["images"]
    assert [e.step for e in events.Images("samples")] == [2, 4]      # step 2's grid, and the final one


def test_profiler_window_writes_traces_and_prints_the_table(runs):
    on, _, printed = runs
    profile = on / "profile"
    assert json.loads((profile / "trace_rank0.json").read_text())["traceEvents"]
    assert list(profile.glob("rank0.*.pt.trace.json"))
    assert f"rank 0: profile of steps 2-3 written to {profile}" in printed
    assert "Self CPU time total" in printed and "aten::" in printed


def test_wandb_logs_offline(world, tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is the optional extra `wandb` (pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    train(load(None, _args(tiny_data, run, "train.wandb_project=harness-test", "train.tensorboard=false",
                           "train.peak_tflops=1", "train.sample_every_steps=0")))
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_profile_steps_are_validated():
    assert profile_window("") is None and profile_window("3:5") == (3, 5)
    assert load(None, ["train.profile_steps=2:4"]).train.profile_steps == "2:4"     # not YAML 1.1's base 60
    for bad in ("4:2", "0:3", "3", "a:b"):
        with pytest.raises(ConfigError, match="train.profile_steps"):
            load(None, [f"train.profile_steps={bad}"])
    with pytest.raises(ConfigError, match="train.peak_tflops"):
        load(None, ["train.peak_tflops=-1"])
