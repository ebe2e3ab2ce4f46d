"""Faults a cluster produces lose nothing and run no code from a file: the run-directory lock,
saves that never skip, pruning, signals during saves, crafted and corrupt checkpoints, non-finite
steps, time limits, paths that leave their folder."""

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch

from harness.checkpoint import io, state
from harness.checkpoint.rundir import LOCK_FILE, RunDirLocked
from harness.config import load
from harness.train import loop
from harness.train.loop import TrainingError, train
from harness.train.stopping import Stop


def _cfg(tiny_overrides, run, *extra):
    return load(None, [*tiny_overrides, f"train.run_dir={run}", *extra])


def _meta(run, name=None):
    return io.read_meta(run / name if name else io.latest_checkpoint(run))


# --- 1. the run-directory lock ------------------------------------------------------------------

def test_a_second_job_refuses_naming_the_holder(world, tiny_overrides, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK_FILE).write_text(json.dumps({
            "host": socket.gethostname(), "pid": holder.pid, "pid_started": psutil.Process(holder.pid).create_time(),
            "slurm_job": "4242", "slurm_restart": 0, "since": "2026-11-30T10:00:00Z"}))
        with pytest.raises(RunDirLocked, match=rf"in use by .* pid {holder.pid}, Slurm job 4242"):
            train(_cfg(tiny_overrides, run, "train.steps=1"))
        assert not list(run.glob("step_*")) and not (run / "log.jsonl").exists()
    finally:
        holder.kill()


def test_a_stale_lock_is_taken_over_with_a_message(world, tiny_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "pid_started": 1.0}))
    other = tmp_path / "other"
    other.mkdir()
    (other / LOCK_FILE).write_text(json.dumps({"host": "node-that-died", "pid": 1, "pid_started": 1.0}))
    os.utime(other / LOCK_FILE, (time.time() - 3600, time.time() - 3600))
    for path, why in ((run, "its process is gone"), (other, "its last heartbeat is")):
        assert train(_cfg(tiny_overrides, path, "train.steps=1")).complete
        assert why in capsys.readouterr().err
        assert not (path / LOCK_FILE).exists()                 # released at the end


# --- 2. saves never skipped, pruning --------------------------------------------------------------

def test_a_rerun_after_a_rollback_saves_and_ends_on_its_own_checkpoint(world, tiny_overrides, tmp_path):
    """`rm latest`, then the same command: the old step_N are replaced, not skipped."""
    run = tmp_path / "run"
    train(_cfg(tiny_overrides, run, "train.steps=4", "train.ckpt_every_steps=2", "train.keep_checkpoints=5"))
    first = _meta(run)["run_id"]
    (run / io.LATEST).unlink()
    outcome = train(_cfg(tiny_overrides, run, "train.steps=4", "train.ckpt_every_steps=2", "train.keep_checkpoints=5"))
    assert outcome.complete and outcome.checkpoint == run / "step_0000004"
    assert (run / io.LATEST).read_text().strip() == "step_0000004"
    assert _meta(run)["run_id"] != first and _meta(run, "step_0000002")["run_id"] == _meta(run)["run_id"]


def test_pruning_after_a_rollback_keeps_latest_and_what_it_did_not_write(world, tiny_overrides, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_overrides, run, "train.steps=6", "train.ckpt_every_steps=2", "train.keep_checkpoints=5"))
    foreign = run / "step_0000001"                             # a checkpoint of another run, copied in
    shutil.copytree(run / "step_0000002", foreign)
    (foreign / "meta.json").write_text(json.dumps({**_meta(run, "step_0000002"), "step": 1, "run_id": "someone"}))
    io.set_latest(run, run / "step_0000002")                  # roll back by hand
    train(_cfg(tiny_overrides, run, "train.steps=4", "train.ckpt_every_steps=1", "train.keep_checkpoints=2"))
    names = sorted(p.name for p in run.glob("step_*"))
    assert (run / io.LATEST).read_text().strip() == "step_0000004"
    # step_3 and step_4: the newest two of this run; step_2 pruned only after newer ones existed;
    # step_6 (the rolled-back future) and the foreign step_1 untouched.
    assert names == ["step_0000001", "step_0000003", "step_0000004", "step_0000006"]


# --- 3. signals never cut a save -------------------------------------------------------------------

@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGUSR1", "SIGTERM")])
def test_signals_during_a_save_let_it_finish_then_stop(world, tiny_overrides, tmp_path, monkeypatch, signals):
    run = tmp_path / "run"
    real_save = io.dist_checkpointing.save

    def signalled_save(state, path):
        for name in signals:                               # a second signal does not abort the save either
            os.kill(os.getpid(), getattr(signal, name))
        time.sleep(0.05)
        real_save(state, path)
    monkeypatch.setattr(io.dist_checkpointing, "save", signalled_save)
    outcome = train(_cfg(tiny_overrides, run, "train.steps=6", "train.ckpt_every_steps=2", "train.requeue=false"))
    assert outcome.stop is Stop.SIGTERM and not outcome.complete and outcome.step == 2
    assert (run / io.LATEST).read_text().strip() == "step_0000002" and not list(run.glob(".tmp-*"))
    assert _meta(run)["step"] == 2 and not _meta(run)["complete"]


# --- 4. no code from a checkpoint ------------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/harness-test-pwned",))


def test_a_crafted_metadata_pickle_runs_nothing(world, tiny_overrides, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_overrides, run, "train.steps=2", "train.ckpt_every_steps=2"))
    ckpt = io.latest_checkpoint(run)
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Evil()))
    marker = "/tmp/harness-test-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    inspect = subprocess.run([sys.executable, "tools/inspect_ckpt.py", str(run)], capture_output=True, text=True)
    assert inspect.returncode != 0 and "refuses to load posix.system" in inspect.stderr
    with pytest.raises(io.CheckpointError, match="no checkpoint there can be read"):
        train(_cfg(tiny_overrides, run, "train.steps=4"))
    assert not os.path.exists(marker)
    assert (run / "corrupt-step_0000002").is_dir()          # kept for inspection, out of the way


# --- 5. no non-finite state saved -------------------------------------------------------------------

def _nan_batches(monkeypatch, bad_steps):
    real, calls = loop.microbatches, []

    def poisoned(reader, *args):
        mbs = real(reader, *args)
        calls.append(1)
        if len(calls) in bad_steps:
            for mb in mbs:
                mb.x0[:] = float("nan")
        return mbs
    monkeypatch.setattr(loop, "microbatches", poisoned)


def test_a_non_finite_step_is_skipped_and_counted(world, tiny_overrides, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _nan_batches(monkeypatch, {2, 3})
    assert train(_cfg(tiny_overrides, run, "train.steps=4", "train.continuity_samples=0")).complete
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["skipped_steps"] for x in lines] == [0, 1, 2, 2] and _meta(run)["skipped_steps"] == 2
    assert all(torch.isfinite(t).all() for t in io.read_tensors(io.latest_checkpoint(run)).values())


def test_too_many_non_finite_steps_stop_naming_the_step(world, tiny_overrides, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _nan_batches(monkeypatch, set(range(3, 100)))
    with pytest.raises(TrainingError, match=r"step 5: 3 steps in a row had a non-finite loss .*run/step_0000004"):
        train(_cfg(tiny_overrides, run, "train.steps=20", "train.ckpt_every_steps=2", "optim.max_skipped_steps=3"))
    # step 4's checkpoint holds step 2's weights (steps 3 and 4 were skipped) and the data position past them
    assert (run / io.LATEST).read_text().strip() == "step_0000004"
    assert io.read_tensors(run / "step_0000004", "model.").keys() and _meta(run)["skipped_steps"] == 2


def test_non_finite_weights_are_never_saved(world, tiny_overrides, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_update = loop.EMA.update

    def broken(self, model, n):
        real_update(self, model, n)
        next(iter(self.shadow.values())).fill_(float("inf"))
    monkeypatch.setattr(loop.EMA, "update", broken)
    with pytest.raises(io.CheckpointError, match=r"step 2: not saved, the weights are not finite \(ema\."):
        train(_cfg(tiny_overrides, run, "train.steps=4", "train.ckpt_every_steps=2"))
    assert not (run / io.LATEST).exists() and not list(run.glob("step_*"))



@pytest.mark.parametrize("family, bad", [("model.", float("nan")), ("ema.", float("-inf")), ("model.", float("inf"))])
def test_finite_check_names_the_tensor(family, bad):
    """NaN, inf and -inf anywhere in the weights or the EMA name the first tensor that holds one."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2).bfloat16())
    ema = loop.EMA(model, 0.9)
    state._check_finite(1, model, ema)
    target = dict(model.named_parameters())["1.weight"] if family == "model." else ema.shadow["1.weight"]
    with torch.no_grad():
        target[1, 2] = bad
    with pytest.raises(io.CheckpointError, match=rf"step 1: not saved, the weights are not finite \({family}1\.weight\)"):
        state._check_finite(1, model, ema)

# --- 6. ranges and time limits -----------------------------------------------------------------------

BAD = ["train.time_limit_minutes=-1", "optim.beta2=1.5", "optim.weight_decay=-1", "parallel.timeout_s=inf",
       "optim.clip_grad=nan", "optim.eps=0", "data.on_corrupt=ignore", "diffusion.prediction=eps",
       "diffusion.x_sigma_floor=0"]


@pytest.mark.parametrize("override", BAD)
def test_check_config_names_an_out_of_range_key(tiny_overrides, override):
    result = subprocess.run([sys.executable, "tools/check_config.py", "--config", "configs/tiny/core.yaml",
                             *tiny_overrides, override], capture_output=True, text=True)
    key = override.split("=")[0]
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and f"{key} must be" in result.stderr


def test_a_time_limited_stop_is_stopped_unless_the_config_says_it_completes(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "harness.train", *tiny_overrides, f"train.run_dir={run}", "train.steps=100000",
            "train.time_limit_minutes=0.002"]
    finished = [sys.executable, "tools/check_config.py", "--config", "configs/tiny/core.yaml", *tiny_overrides,
                f"train.run_dir={run}", "train.steps=100000", "--finished"]
    stopped = subprocess.run(args, capture_output=True, text=True)
    assert stopped.returncode == 3 and "stopped, not finished" in stopped.stdout
    assert subprocess.run(finished, capture_output=True).returncode == 3
    done = subprocess.run(args + ["train.time_limit_completes=true"], capture_output=True, text=True)
    assert done.returncode == 0 and subprocess.run(finished, capture_output=True).returncode == 0


# --- 9, 10. corrupt checkpoints, paths ---------------------------------------------------------------

def test_a_truncated_checkpoint_is_named_and_resume_falls_back(world, tiny_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train.ckpt_every_steps=2", "train.keep_checkpoints=2"]
    train(_cfg(tiny_overrides, run, "train.steps=4", *args))
    shard = max((io.latest_checkpoint(run)).glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[:100])
    assert any(str(shard) in line and "truncated" in line for line in io.verify(io.latest_checkpoint(run)))
    outcome = train(_cfg(tiny_overrides, run, "train.steps=5", *args))
    err = capsys.readouterr().err
    assert f"WARNING: {run / 'step_0000004'} cannot be read: {shard}: truncated" in err
    assert "falling back to step_0000002" in err
    assert outcome.complete and outcome.step == 5 and (run / "corrupt-step_0000004").is_dir()
    # the checkpoint fallen back to is kept even though keep_checkpoints=2 counts step_5 and step_4's slot
    assert {"step_0000002", "step_0000005"} <= {p.name for p in run.glob("step_*")}


def test_latest_cannot_point_outside_its_folder(tmp_path):
    (tmp_path / io.LATEST).write_text("../../etc\n")
    with pytest.raises(io.CheckpointError, match="not a checkpoint name"):
        io.resolve(tmp_path)


def test_import_checks_every_tensor_shape_and_keeps_to_its_folder(world, tiny_overrides, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from harness.checkpoint.reshard import export_safetensors, import_safetensors
    from harness.parallel.layout import initialize_layout

    run = tmp_path / "run"
    train(_cfg(tiny_overrides, run, "train.steps=1"))
    release = export_safetensors(io.latest_checkpoint(run), tmp_path / "x.safetensors")
    with safe_open(str(release), "pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(header["config"])
    config["train"]["init_from"] = "/somewhere/else"                 # ignored: the copy starts from the file
    tensors["cond.null_text"] = tensors["cond.null_text"][:1]       # broadcasting would hide this
    save_file(tensors, str(release), metadata={**header, "config": json.dumps(config)})
    with pytest.raises(ValueError, match=r"1 tensors do not have the shapes .*: cond.null_text \(1,\) \(model \(32,\)\)"):
        import_safetensors(release, tmp_path / "imported", initialize_layout(1, 1))
