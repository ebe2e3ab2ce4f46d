"""Checkpoints across layouts (reshard round trips, growth at another layout, resume after
resharding) in fp32 and in bf16 with the distributed optimizer, and a writer killed in the middle
of a save."""

import json
import shutil
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


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def conversions(request, world, tiny_data, tmp_path_factory):
    """A tiny core trained 3 steps in one process, then the 4-process conversions of reshard_worker.py."""
    root = tmp_path_factory.mktemp(f"conversions-{request.param}")
    data = [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}",
            "train.matmul_precision=highest", "train.log_every_steps=1", f"train.precision={request.param}"]
    train(load("configs/tiny/core.yaml", data + [f"train.run_dir={root / 'source'}", "train.steps=3",
                                                 "optim.decay_steps=5"]))
    launch("torchrun", 4, [str(REPO / "tests/dist/reshard_worker.py"), "--source", str(root / "source"),
                           "--out", str(root), "--data", str(tiny_data), "--precision", request.param,
                           "--negligible", *NEGLIGIBLE], timeout=600)
    return root


@pytest.mark.parametrize("hop", ["tp2_pp2", "tp2_pp1", "tp1_pp2", "tp1_pp1"])
def test_reshard_round_trip_keeps_every_tensor(conversions, hop):
    source, result = io.resolve(conversions / "source"), io.resolve(conversions / hop)
    a, b = io.read_tensors(source), io.read_tensors(result)
    assert a.keys() == b.keys() and any(k.startswith("optimizer.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    meta = io.read_meta(result)
    assert meta["step"] == 3 and meta["consumed_samples"] == io.read_meta(source)["consumed_samples"]
    assert meta["layout"]["tp"] * meta["layout"]["pp"] * meta["layout"]["dp"] == 4


def test_growth_at_another_layout_carries_the_core_bit_for_bit(conversions):
    before = io.read_tensors(io.resolve(conversions / "source"), "ema.")
    grown = io.resolve(conversions / "grown")
    assert io.read_meta(grown)["layout"] == {"tp": 2, "pp": 2, "dp": 1, "world": 4}
    for family in ("model.", "ema."):
        after = {k: v for k, v in io.read_tensors(grown, family).items() if k.startswith(("cond.", "core."))}
        # bf16 weights hold the fp32 EMA rounded once; the EMA itself is carried bit for bit
        assert after and all(torch.equal(after[k], before[k].to(after[k].dtype)) for k in after)


def test_training_resumes_the_same_after_resharding(conversions):
    logs = [[json.loads(x)["loss"] for x in (conversions / name / "log.jsonl").read_text().splitlines()]
            for name in ("resume_source", "resume_resharded", "resume_relayout")]
    assert len(logs[0]) == 2 and logs[0] == logs[1] == logs[2]


def test_a_layout_only_conversion_copies_the_files_in_one_process(conversions, tmp_path):
    """tools/reshard.py with only layout overrides, without a launcher: the same files, the target
    layout in the config; a damaged source is named and nothing is written."""
    source, out = io.resolve(conversions / "source"), tmp_path / "tp2pp2"
    args = [str(BIN / "python"), "tools/reshard.py", "--source", str(conversions / "source"), "--out", str(out),
            "parallel.tp=2", "parallel.pp=2"]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "files copied" in done.stdout, done.stderr
    result = io.resolve(out)
    assert not io.verify(result, tensors=True)
    for f in source.iterdir():
        if f.name != "meta.json":
            assert f.read_bytes() == (result / f.name).read_bytes(), f
    meta, before = io.read_meta(result), io.read_meta(source)
    assert (meta["config"]["parallel"]["tp"], meta["config"]["parallel"]["pp"]) == (2, 2)
    assert meta["config"]["train"]["run_dir"] == str(out)
    same = {k for k in before if k not in ("config", "saved_at")}
    assert {k: meta[k] for k in same} == {k: before[k] for k in same}

    damaged = tmp_path / "damaged"
    shutil.copytree(source, damaged / source.name)
    shard = max((damaged / source.name).glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[:100])
    args[3:6] = [str(damaged / source.name), "--out", str(tmp_path / "not-written")]
    refused = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and f"{shard}: truncated" in refused.stderr
    assert io.latest_checkpoint(tmp_path / "not-written") is None


def test_resharded_then_resumed_keeps_the_loaded_weights(conversions):
    """The last hop (TP1 x PP1), resumed at TP2 x PP2 for one step at a negligible learning rate."""
    assert_held(weights(conversions / "tp1_pp1"), weights(conversions / "held"))


def _kill_during_a_save(args, run) -> bool:
    """Start the trainer, SIGKILL it as soon as a checkpoint is being written; True if the kill
    landed inside a save (its temporary directory is left behind)."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (list(run.glob(".tmp-step_*")) and (run / io.LATEST).exists()):
            assert time.time() < deadline and proc.poll() is None, "no checkpoint was being written"
            time.sleep(0.002)
        psutil.Process(proc.pid).kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return bool(list(run.glob(".tmp-step_*")))


@pytest.mark.parametrize("async_save", [False, True])
def test_killed_writer_leaves_the_last_good_checkpoint(world, tiny_data, tmp_path, async_save):
    """SIGKILL the trainer while a checkpoint is being written (by itself, or by its background
    writer with train.async_save); `latest` stays on a complete one and a rerun resumes from it."""
    run = tmp_path / "killed"
    data = [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}", f"train.run_dir={run}",
            f"train.async_save={str(async_save).lower()}"]
    args = [str(BIN / "python"), "-m", "harness.train", "--config", "configs/tiny/core.yaml", *data,
            "train.steps=100000", "train.ckpt_every_steps=1", "train.keep_checkpoints=3"]
    # The kill can land just after a save completed; try again (each try resumes the run).
    assert any(_kill_during_a_save(args, run) for _ in range(5)), "never caught a save in progress"
    latest = io.latest_checkpoint(run)                     # a complete checkpoint, or this raises
    step = io.read_meta(latest)["step"]
    train(load("configs/tiny/core.yaml", data + [f"train.steps={step + 2}", "train.ckpt_every_steps=1"]))
    assert io.read_meta(io.latest_checkpoint(run))["step"] == step + 2
