"""The real `harness-train` under mpiexec and torchrun: a run continues at another data-parallel
size with the same global sample sequence, and a rank that dies stops the job, named, in bounded time."""

import json
import os
import subprocess
import time

import psutil
import pytest
import torch
from invariants import NEGLIGIBLE, assert_held, weights
from launching import BIN, REPO, launch

from harness.checkpoint import io
from harness.config import load
from harness.train.loop import train

STEPS = 6
TOL = 1e-5


def _args(overrides: list[str], run_dir, steps: int) -> list[str]:
    return [o for o in overrides if not o.startswith("train.run_dir=")] + [
        f"train.run_dir={run_dir}", f"train.steps={steps}", f"optim.decay_steps={STEPS}", "train.ckpt_every_steps=3",
        "optim.eps=1e-4"]


def _losses(run_dir) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [x["loss"] for x in sorted({x["step"]: x for x in lines}.values(), key=lambda x: x["step"])]


@pytest.fixture(scope="module")
def uninterrupted(world, tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    overrides = [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}",
                 "model.size=tiny", "parallel.global_batch=8", "parallel.micro_batch=2", "train.log_every_steps=1",
                 "train.sample_every_steps=0", "train.num_samples=2", "diffusion.sample_steps=2",
                 "optim.warmup_steps=1", "train.matmul_precision=highest"]
    train(load(None, _args(overrides, run, STEPS)))
    return overrides, _losses(run)


def _assert_same_sequence(run_dir, reference):
    losses = _losses(run_dir)
    assert len(losses) == STEPS
    worst = max(abs(a - b) / b for a, b in zip(losses, reference))
    print(f"{run_dir.name}: max relative loss difference {worst:.1e}")
    assert worst < TOL


def test_mpiexec_two_ranks_then_one(uninterrupted, tmp_path):
    """3 steps at DP=2 under mpiexec (MPI rendezvous, MPI-broadcast manifest), then 3 at DP=1."""
    overrides, reference = uninterrupted
    run = tmp_path / "mpi"
    launch("mpiexec", 2, ["-m", "harness.train", *_args(overrides, run, 3)])
    assert json.loads((run / "step_0000003" / "meta.json").read_text())["layout"]["dp"] == 2
    train(load(None, _args(overrides, run, STEPS)))
    _assert_same_sequence(run, reference)


def test_torchrun_continues_a_one_process_run(uninterrupted, tmp_path):
    """3 steps in one process, then 3 at DP=2 under torchrun (optimizer state resharded over DP)."""
    overrides, reference = uninterrupted
    run = tmp_path / "torchrun"
    train(load(None, _args(overrides, run, 3)))
    launch("torchrun", 2, ["-m", "harness.train", *_args(overrides, run, STEPS)])
    assert json.loads((run / "step_0000006" / "meta.json").read_text())["layout"]["dp"] == 2
    _assert_same_sequence(run, reference)


def test_a_bf16_run_resumed_at_another_dp_keeps_its_weights(uninterrupted, tmp_path):
    """bf16 with the distributed optimizer: 3 steps in one process, then one step at DP=2 at a
    negligible learning rate (the schedule overridden): the weights stay those it loaded."""
    overrides, _ = uninterrupted
    run = tmp_path / "bf16"
    bf16 = [*overrides, "train.precision=bf16", "parallel.distributed_optimizer=true"]
    train(load(None, _args(bf16, run, 3)))
    loaded = weights(run)
    launch("torchrun", 2, ["-m", "harness.train", *_args(bf16, run, 4), "optim.override_schedule=true", *NEGLIGIBLE])
    assert json.loads((run / "step_0000004" / "meta.json").read_text())["layout"]["dp"] == 2
    assert_held(loaded, weights(run))


def test_overlapped_communication_trains_the_same(uninterrupted, tmp_path):
    """bf16, DP=2 with the distributed optimizer: the gradient reduce and the weight all-gather
    overlapped with compute (the EMA folds each update in after the next forward has gathered it)
    give checkpoints - weights, EMA, optimizer - identical to the run without overlap."""
    overrides, _ = uninterrupted
    bf16 = [*overrides, "train.precision=bf16", "parallel.distributed_optimizer=true"]
    runs = {}
    for name, extra in (("plain", []), ("overlap", ["parallel.overlap_grad_reduce=true",
                                                    "parallel.overlap_param_gather=true", "parallel.bucket_size=20000"])):
        runs[name] = tmp_path / name
        launch("torchrun", 2, ["-m", "harness.train", *_args(bf16, runs[name], 3), *extra])
    a, b = (io.read_tensors(io.latest_checkpoint(runs[k])) for k in ("plain", "overlap"))
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_dead_rank_stops_the_job_and_is_named(uninterrupted, tmp_path):
    overrides, _ = uninterrupted
    run = tmp_path / "dies"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "harness.train",
           *_args(overrides, run, 10_000), "train.ckpt_every_steps=10000", "parallel.timeout_s=60"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not ((run / "log.jsonl").exists() and (run / "log.jsonl").read_text().count("\n") >= 2):
            assert time.time() < deadline and proc.poll() is None, "training did not start"
            time.sleep(0.5)
        victim = next(p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1")
        victim.kill()
        killed_at = time.time()
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert time.time() - killed_at < 60, "the surviving rank did not stop in bounded time"
    assert "rank      : 1" in output or "rank: 1" in output, output[-3000:]


def test_a_hung_rank_under_mpiexec_ends_the_job_and_is_named(uninterrupted, tmp_path):
    """SIGSTOP rank 1 under mpiexec: rank 0's collective times out (parallel.timeout_s), names rank 1
    from the progress in the rendezvous store, and aborts the MPI world; nothing waits in MPI_Finalize."""
    if not (BIN / "mpiexec").exists():
        pytest.skip("mpiexec is not in the virtualenv (pip install mpich)")
    overrides, _ = uninterrupted
    run = tmp_path / "hung"
    cmd = [str(BIN / "mpiexec"), "-n", "2", str(BIN / "python"), "-m", "harness.train",
           *_args(overrides, run, 10_000), "train.ckpt_every_steps=10000", "parallel.timeout_s=20"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 180
        while not ((run / "log.jsonl").exists() and (run / "log.jsonl").read_text().count("\n") >= 2):
            assert time.time() < deadline and proc.poll() is None, "training did not start"
            time.sleep(0.5)
        victim = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                      if p.environ().get("PMI_RANK") == "1" and "harness.train" in " ".join(p.cmdline()))
        victim.suspend()
        stopped_at = time.time()
        output, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert time.time() - stopped_at < 120, "the job did not end in bounded time"
    assert "rank 0: error: a collective timed out" in output and "rank 1 (last finished step" in output, output[-3000:]


def test_srun_with_the_wrong_mpi_plugin_is_named():
    """srun with a --mpi= plugin that does not match the MPI library: every task is an MPI world of
    one while SLURM_NTASKS says more; stop with one line instead of training N copies alone."""
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_STEP_ID": "0", "PATH": str(BIN)}
    code = "from harness.distributed.launch import init_distributed; init_distributed()"
    out = subprocess.run([str(BIN / "python"), "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "rank 0: MPI world size 1 != SLURM_NTASKS 2; the srun --mpi= plugin does not match" in out.stderr
