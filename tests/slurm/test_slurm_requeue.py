"""Interrupted training on the real local Slurm resumes exactly. One 2-task job of slurm/train.sbatch is
stopped twice: `scancel --signal=USR1` (what --signal=USR1@N sends before the time limit: checkpoint,
self-requeue) and a real preemption by a job in the `high` partition (SIGTERM: checkpoint at once,
Slurm requeues). It restarts twice from those checkpoints and its loss sequence equals an
uninterrupted run's. A SIGTERM outside preemption checkpoints and leaves the stage not done."""

import json
import re
import subprocess
import sys
import time

import pytest
from slurmjobs import (
    JOB_ENV,
    REPO,
    cancel,
    job,
    sbatch,
    useful_lines,
    wait_done,
    wait_until,
)

pytestmark = pytest.mark.slurm
STEPS = 120
GLOBAL_BATCH = 8
TOL = 1e-5          # 2 data-parallel ranks against one process: same samples, another reduction order


def _log(run_dir) -> list[dict]:
    path = run_dir / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _ckpt_step(run_dir) -> int:
    latest = run_dir / "latest"
    return int(latest.read_text().strip().removeprefix("step_")) if latest.exists() else 0


def test_usr1_requeue_and_preemption_resume_exactly(cluster, tiny_data, tmp_path):
    common = [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}", f"train.steps={STEPS}",
              f"parallel.global_batch={GLOBAL_BATCH}", "parallel.micro_batch=4", "train.log_every_steps=1",
              "train.ckpt_every_steps=1000", "train.keep_checkpoints=10", "train.num_samples=2",
              "diffusion.sample_steps=2", "train.matmul_precision=highest"]
    run, ref = tmp_path / "run", tmp_path / "reference"
    out = tmp_path / "job.out"
    job_id = sbatch("--gpus-per-node=0", "--ntasks-per-node=2", f"--output={out}", "--job-name=harness-requeue",
                    REPO / "slurm" / "train.sbatch", "configs/tiny/core.yaml", *common, f"train.run_dir={run}")
    # The uninterrupted reference: the same config as one plain process, while the job runs.
    ref_out = tmp_path / "reference.out"
    with open(ref_out, "w") as f:
        reference = subprocess.Popen([sys.executable, "-m", "harness.train", "--config", "configs/tiny/core.yaml",
                                      *common, f"train.run_dir={ref}"], cwd=REPO, env=JOB_ENV, stdout=f,
                                     stderr=subprocess.STDOUT)
    high = None
    timeline = []

    def mark(what: str) -> None:
        timeline.append((time.monotonic(), what))

    try:
        wait_until(lambda: len(_log(run)) >= 3, 300, "the job's first steps")
        mark(f"{len(_log(run))} steps logged: scancel --signal=USR1")
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
        wait_until(lambda: job(job_id)["Restarts"] == "1", 60, "the self-requeue")
        usr1_step = _ckpt_step(run)
        mark(f"requeued ({job(job_id)['JobState']}), checkpoint step {usr1_step}")
        wait_until(lambda: job(job_id)["JobState"] == "RUNNING", 120, "the restart")
        mark("running again (restart 1)")
        wait_until(lambda: len(_log(run)) >= usr1_step + 3, 300, "steps after the restart")
        mark(f"{len(_log(run))} steps logged: a job in partition high preempts it")
        high = sbatch("--partition=high", "--ntasks=2", "--gpus-per-node=0", f"--output={tmp_path}/high.out",
                      "--wrap", "sleep 1")
        preempted_at = time.monotonic()
        term_step = wait_until(lambda: _ckpt_step(run) > usr1_step and _ckpt_step(run), 30, "the SIGTERM checkpoint")
        mark(f"SIGTERM checkpoint step {term_step} written")
        checkpoint_s = time.monotonic() - preempted_at
        wait_until(lambda: job(job_id)["Restarts"] == "2", 60, "the requeue after preemption")
        mark(f"requeued ({job(job_id)['JobState']})")
        wait_until(lambda: job(job_id)["JobState"] == "RUNNING", 120, "the restart after preemption")
        mark("running again (restart 2)")
        record = wait_done([job_id], 300)[0]
        mark(f"{record['JobState']}")
        assert reference.wait(timeout=300) == 0, ref_out.read_text()[-3000:]
    finally:
        cancel([job_id] + ([high] if high else []))
        if reference.poll() is None:
            reference.kill()
    t0 = timeline[0][0]
    print("\n".join(f"  +{t - t0:5.1f} s  {what}" for t, what in timeline))

    text = out.read_text()
    lines = useful_lines(text)
    assert record["JobState"] == "COMPLETED" and record["Restarts"] == "2"
    for count in (0, 1, 2):
        assert f"SLURM_RESTART_COUNT={count} " in text
    usr1_ckpt = run / f"step_{usr1_step:07d}"
    assert f"SIGUSR1 at step {usr1_step}: checkpoint {usr1_ckpt} written, requeueing" in text
    assert re.search(rf"\*\*\* JOB {job_id} ON \S+ CANCELLED AT \S+ DUE TO PREEMPTION \*\*\*", text)
    resumed = [line.split("resumed from ")[1] for line in lines if "resumed from" in line and line.startswith("stage")]
    assert resumed == [str(run / f"step_{usr1_step:07d}"), str(run / f"step_{term_step:07d}")]
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    kill_wait = int(re.search(r"KillWait\s*=\s*(\d+)", config).group(1))
    assert checkpoint_s < kill_wait, f"the SIGTERM checkpoint must come within KillWait ({kill_wait} s), before SIGKILL"

    # Same data position: the checkpoints' sample counters, and every step logged exactly once (each
    # stop checkpointed the step it had just logged, so nothing was repeated or skipped).
    for step in (usr1_step, term_step):
        meta = json.loads((run / f"step_{step:07d}" / "meta.json").read_text())
        assert meta["step"] == step and meta["consumed_samples"] == step * GLOBAL_BATCH
    log = _log(run)
    assert [e["step"] for e in log] == list(range(1, STEPS + 1))
    expected = [e["loss"] for e in _log(ref)]
    losses = [e["loss"] for e in log]
    worst = max(abs(a - b) / b for a, b in zip(losses, expected))
    print(f"interrupted at steps {usr1_step} (USR1) and {term_step} (preemption); SIGTERM checkpoint after "
          f"{checkpoint_s:.1f} s; max relative loss difference to the uninterrupted run {worst:.1e}")
    assert len(expected) == STEPS and worst < TOL
    assert (run / "samples.png").stat().st_size > 1000


def test_sigterm_checkpoints_at_once_and_the_stage_is_not_done(cluster, tiny_data, tmp_path):
    """`scancel --signal=TERM`: the step ends, the checkpoint follows at once, the job fails (exit 3)
    so that a chain's next stage does not start from an unfinished one."""
    run, out = tmp_path / "run", tmp_path / "job.out"
    job_id = sbatch("--gpus-per-node=0", "--ntasks-per-node=1", f"--output={out}", REPO / "slurm" / "train.sbatch",
                    "configs/tiny/core.yaml", f"data.path={tiny_data / 'train'}",
                    f"data.heldout_path={tiny_data / 'heldout'}", f"train.run_dir={run}", "train.steps=100000",
                    "train.log_every_steps=1", "train.ckpt_every_steps=100000", "train.num_samples=2")
    try:
        wait_until(lambda: len(_log(run)) >= 3, 300, "the job's first steps")
        signalled = time.monotonic()
        subprocess.run(["scancel", "--signal=TERM", job_id], check=True)
        step = wait_until(lambda: _ckpt_step(run), 30, "the SIGTERM checkpoint")
        checkpoint_s = time.monotonic() - signalled
        record = wait_done([job_id], 60)[0]
    finally:
        cancel([job_id])
    text = out.read_text()
    print(f"SIGTERM: checkpoint step {step} after {checkpoint_s:.1f} s; job {record['JobState']} "
          f"exit {record['ExitCode']}: {useful_lines(text)[-1]}")
    assert f"SIGTERM at step {step}: checkpoint {run / f'step_{step:07d}'} written, not requeued" in text
    assert useful_lines(text)[-1] == f"error: {run}: stopped at step {step} of 100000; submit the same job again to resume"
    assert record["JobState"] == "FAILED" and record["ExitCode"] == "3:0" and record["Restarts"] == "0"
    assert _log(run)[-1]["step"] == step and checkpoint_s < 10
