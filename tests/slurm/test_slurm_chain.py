"""The real slurm/grow_chain.sh on the local cluster: five jobs (core 32 px -> grow -> grow-frozen 64 px ->
grow -> grow-finetune 128 px), each at its own layout, run in order and hand their checkpoints on."""

import json
from itertools import pairwise

import pytest
from slurmjobs import cancel, run, useful_lines, wait_done, when

pytestmark = pytest.mark.slurm
STEPS = 3


def _meta(run_dir, step):
    return json.loads((run_dir / f"step_{step:07d}" / "meta.json").read_text())


def test_growth_chain_runs_in_order_and_hands_on_checkpoints(cluster, tiny_data, tmp_path):
    runs = tmp_path / "runs"
    env = {
        "RUN_ROOT": str(runs), "GPUS_PER_TASK": "0", "SBATCH_ARGS": f"--output={tmp_path}/%x-%j.out",
        "OVERRIDES": " ".join([
            f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}", f"train.steps={STEPS}",
            "parallel.global_batch=4", "parallel.micro_batch=2", "train.log_every_steps=1",
            "train.ckpt_every_steps=1000", "train.num_samples=2", "diffusion.sample_steps=2"]),
        # Three resolutions, so that both growth steps are real; every job at another layout.
        "CORE_OVERRIDES": "model.resolution_px=32",
        "FROZEN_OVERRIDES": "model.resolution_px=64", "FROZEN_TASKS": "2", "FROZEN_LAYOUT": "parallel.tp=2",
        "FINETUNE_TASKS": "2", "FINETUNE_LAYOUT": "parallel.pp=2",       # configs/tiny/grow-finetune: 128 px
    }
    submitted = run(["bash", "slurm/grow_chain.sh"], env)
    print(submitted)
    last = submitted.strip().splitlines()[-1]
    assert last.startswith("jobs: ")
    ids = last.split("(")[0].split()[1:]
    assert len(ids) == 5, submitted
    try:
        records = wait_done(ids, timeout=900, outputs=tmp_path)
    finally:
        cancel(ids)

    names = [r["JobName"] for r in records]
    assert names == ["harness-core", "harness-grow-to-grow-frozen", "harness-grow-frozen",
                     "harness-grow-to-grow-finetune", "harness-grow-finetune"]
    t0 = when(records[0]["SubmitTime"])
    for r in records:
        start, end = ((when(r[k]) - t0).seconds for k in ("StartTime", "EndTime"))
        print(f"job {r['JobId']:>4} {r['JobName']:<30} {r['JobState']:<9} start +{start:>3} s  end +{end:>3} s"
              f"  ({r['NumTasks']} task(s))")
    assert all(r["JobState"] == "COMPLETED" for r in records), [(r["JobName"], r["JobState"]) for r in records]
    for before, after in pairwise(records):
        assert when(after["StartTime"]) >= when(before["EndTime"]), (before["JobName"], after["JobName"])
        assert after["Dependency"] == "(null)"              # satisfied and cleared once it started
    for r in records:
        out = (tmp_path / f"{r['JobName']}-{r['JobId']}.out").read_text()
        assert "SLURM_RESTART_COUNT=0" in out and f"tasks={r['NumTasks']}" in out

    core, frozen, finetune = runs / "core", runs / "grow-frozen", runs / "grow-finetune"
    # Each grown step-0 checkpoint names the checkpoint it grew from; it loads at another layout.
    grown = _meta(frozen, 0)
    assert grown["stage"] == "grow-frozen" and grown["config"]["model"]["resolution_px"] == 64
    assert grown["lineage"][-1]["checkpoint"] == str((core / f"step_{STEPS:07d}").resolve())
    assert grown["lineage"][-1]["stage"] == "core" and grown["lineage"][-1]["resolution_px"] == 32
    assert grown["layout"]["tp"] == 1 and grown["frozen"]
    assert _meta(frozen, STEPS)["layout"]["tp"] == 2
    grown = _meta(finetune, 0)
    assert grown["stage"] == "grow-finetune" and grown["config"]["model"]["resolution_px"] == 128
    assert [e["stage"] for e in grown["lineage"]] == ["core", "grow-frozen"]
    assert grown["lineage"][-1]["checkpoint"] == str((frozen / f"step_{STEPS:07d}").resolve())
    assert not grown["frozen"]
    final = _meta(finetune, STEPS)
    assert final["layout"]["pp"] == 2 and final["lineage"] == grown["lineage"]
    for run_dir in (core, frozen, finetune):
        assert (run_dir / "samples.png").stat().st_size > 1000
        assert len((run_dir / "log.jsonl").read_text().splitlines()) == STEPS
    grow_out = (tmp_path / f"harness-grow-to-grow-finetune-{ids[3]}.out").read_text()
    assert any(line.startswith("carried ") and "bit for bit" in line for line in useful_lines(grow_out))
