"""Jobs that cannot run fail at once, before srun, with one line that says why; a failed stage cancels
the rest of a growth chain instead of leaving it pending forever."""

import pytest
from slurmjobs import REPO, cancel, job, run, sbatch, useful_lines, wait_done, when

pytestmark = pytest.mark.slurm
TRAIN = REPO / "slurm" / "train.sbatch"
CPU = ["--gpus-per-node=0", "--ntasks-per-node=1"]


def test_bad_config_run_dir_or_venv_fail_at_once(cluster, tiny_data, tmp_path):
    data = [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}"]
    cases = {
        "missing-config": ([TRAIN, tmp_path / "missing.yaml"], {},
                           f"error: {tmp_path / 'missing.yaml'}: config file not found"),
        "unwritable-run-dir": ([TRAIN, "configs/tiny/core.yaml", *data, "train.run_dir=/proc/nope"], {},
                               "error: train.run_dir /proc/nope: not writable (No such file or directory)"),
        "bad-layout": ([TRAIN, "configs/tiny/core.yaml", *data, f"train.run_dir={tmp_path / 'r'}", "parallel.tp=2"],
                       {},
                       "error: parallel.tp * parallel.pp = 2 does not divide the world size 1"),
        "no-venv": ([TRAIN, "configs/tiny/core.yaml"], {"HARNESS_VENV": "/nonexistent"},
                    "error: no python at /nonexistent/bin/python: set HARNESS_VENV (or run bash tools/setup_env.sh)"),
    }
    ids = {name: sbatch(*CPU, f"--output={tmp_path}/{name}.out", *args, env=env)
           for name, (args, env, _) in cases.items()}
    try:
        records = dict(zip(ids, wait_done(list(ids.values()), timeout=120, outputs=tmp_path)))
    finally:
        cancel(list(ids.values()))
    for name, (_, _, message) in cases.items():
        rec, out = records[name], (tmp_path / f"{name}.out").read_text()
        seconds = (when(rec["EndTime"]) - when(rec["StartTime"])).total_seconds()
        print(f"{name}: job {ids[name]} {rec['JobState']} exit {rec['ExitCode']} after {seconds:.0f} s: "
              f"{useful_lines(out)[-1]}")
        assert rec["JobState"] == "FAILED" and rec["ExitCode"] == "2:0", (name, rec["JobState"], rec["ExitCode"])
        assert useful_lines(out)[-1] == message                  # the job output ends with the reason
        assert seconds <= 15 and "srun" not in out               # failed before any job step


def test_a_failed_stage_cancels_the_rest_of_the_chain(cluster, tmp_path):
    env = {"RUN_ROOT": str(tmp_path / "runs"), "GPUS_PER_TASK": "0", "SBATCH_ARGS": f"--output={tmp_path}/%x-%j.out",
           "OVERRIDES": f"data.path={tmp_path / 'no-data'} data.heldout_path={tmp_path / 'no-data'}"}
    ids = run(["bash", "slurm/grow_chain.sh", "--parsable"], env).split()
    try:
        records = wait_done(ids, timeout=120, outputs=tmp_path)
    finally:
        cancel(ids)
    states = [(r["JobName"], r["JobState"], r["Reason"]) for r in records]
    print("\n".join(f"job {j}: {s}" for j, s in zip(ids, states)))
    assert [s for _, s, _ in states] == ["FAILED"] + ["CANCELLED"] * (len(ids) - 1)
    assert all(r == "DependencyNeverSatisfied" for _, _, r in states[1:])
    assert f"error: data.path {tmp_path / 'no-data'}: no data set there (no manifest.json)" in \
        (tmp_path / f"harness-core-{ids[0]}.out").read_text()
    assert job(ids[1])["Dependency"].startswith(f"afterok:{ids[0]}")
