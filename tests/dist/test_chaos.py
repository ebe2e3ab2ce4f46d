"""Chaos: a 2-process bf16 run (distributed optimizer, DP=2) is killed 20 times at random moments
- SIGKILL of one rank, SIGTERM or SIGUSR1 to every rank, as Slurm sends them; half of them while a
checkpoint is being written - and resumed each time. The final weights, EMA and optimizer state
equal the uninterrupted run's bit for bit, every step's loss equals the uninterrupted one, and
`latest` names a complete checkpoint after every kill."""

import json
import random
import signal
import subprocess
import time

import psutil
import pytest
import torch
from launching import BIN, REPO

from harness.checkpoint import io

KILLS = 20
STEPS = 70


def _cmd(tiny_data, run) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "harness.train",
            "--config", "configs/tiny/core.yaml", f"data.path={tiny_data / 'train'}",
            f"data.heldout_path={tiny_data / 'heldout'}", f"train.run_dir={run}", f"train.steps={STEPS}",
            "train.ckpt_every_steps=1", "train.keep_checkpoints=3", "train.log_every_steps=1", "train.precision=bf16",
            "parallel.distributed_optimizer=true", "parallel.micro_batch=2", "train.requeue=false",
            "train.continuity_samples=0", "train.num_samples=2", "diffusion.sample_steps=2", "parallel.timeout_s=60"]


def _logged(run) -> dict[int, float]:
    path = run / "log.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return {x["step"]: x["loss"] for x in lines}


def _ranks(proc) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children(recursive=True) if "RANK" in p.environ()
            and "harness.train" in " ".join(p.cmdline())]


def _kill_once(cmd, run, rng: random.Random) -> str | None:
    """One launch, one kill; returns what was done, or None when the run finished first."""
    target = max(_logged(run), default=0) + rng.randint(1, 4)
    kind = rng.choice(["SIGKILL", "SIGTERM", "SIGUSR1"])
    in_save = rng.random() < 0.5
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={"OMP_NUM_THREADS": "1", "PATH": str(BIN), "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.time() + 300
        while max(_logged(run), default=0) < target or (in_save and not list(run.glob(".tmp-step_*"))):
            if proc.poll() is not None:
                return None
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.005)
        ranks = _ranks(proc)
        if kind == "SIGKILL":
            rng.choice(ranks).kill()
        else:
            for p in ranks:
                p.send_signal(getattr(signal, kind))
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return f"{kind} near step {target}{' during a save' if in_save else ''}"


@pytest.mark.slow
def test_twenty_kills_lose_nothing(world, tiny_data, tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "chaos"
    subprocess.run(_cmd(tiny_data, reference), cwd=REPO, check=True, capture_output=True,
                   env={"OMP_NUM_THREADS": "1", "PATH": str(BIN), "PYTHONWARNINGS": "ignore"})
    rng = random.Random(2026)
    done = []
    while len(done) < KILLS:
        what = _kill_once(_cmd(tiny_data, run), run, rng)
        assert what is not None, f"the run finished after {len(done)} kills; raise STEPS"
        done.append(what)
        if (run / io.LATEST).exists():
            io.read_meta(io.latest_checkpoint(run))          # a complete checkpoint, or this raises
    final = subprocess.run(_cmd(tiny_data, run), cwd=REPO, capture_output=True, text=True,
                           env={"OMP_NUM_THREADS": "1", "PATH": str(BIN), "PYTHONWARNINGS": "ignore"})
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-3000:]
    print(f"{len(done)} kills: " + "; ".join(done))
    a, b = io.read_tensors(io.latest_checkpoint(reference)), io.read_tensors(io.latest_checkpoint(run))
    assert io.read_meta(io.latest_checkpoint(run))["step"] == STEPS and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert _logged(run) == _logged(reference)
    assert not list(run.glob("corrupt-*"))                   # no checkpoint was ever unreadable
