"""Every stage boundary keeps the weights it loads, in the precision users run (bf16 with the
distributed optimizer) as well as fp32 (the invariant: tests/invariants.py)."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from invariants import NEGLIGIBLE, assert_held, max_change, weights

from harness.checkpoint import io
from harness.checkpoint.reshard import (
    export_safetensors,
    import_safetensors,
    load_stage,
)
from harness.checkpoint.splice import CARRIED_FILE
from harness.checkpoint.stage import TrainingStage, bundled_tokenizer
from harness.checkpoint.state import TrainState
from harness.config import load
from harness.growth.grow import grow
from harness.parallel.layout import initialize_layout
from harness.train.continuity import Continuity, ContinuityWarning
from harness.train.loop import train

PRECISIONS = ["fp32", "bf16"]
# The tiny core at 32 px grown to 64 px, 4 images a step: a CPU without native bf16 (AVX2 only)
# emulates bf16 ~75x slower than fp32, and at 64 -> 128 px one grown bf16 step took 4.5 minutes.
GROWN = ["model.resolution_px=64"]


def _data(tiny_data, precision: str) -> list[str]:
    return [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}",
            "train.matmul_precision=highest", "train.log_every_steps=1", "diffusion.sample_steps=2",
            "train.num_samples=2", f"train.precision={precision}", "parallel.distributed_optimizer=true",
            "train.continuity_samples=8", "model.resolution_px=32", "parallel.global_batch=4",
            "parallel.micro_batch=4"]


@pytest.fixture(scope="module", params=PRECISIONS)
def core(request, world, tiny_data, tmp_path_factory):
    """A tiny core trained 4 steps at a real learning rate, in each precision."""
    root = tmp_path_factory.mktemp(f"boundary-{request.param}")
    data = _data(tiny_data, request.param)
    train(load("configs/tiny/core.yaml", data + [f"train.run_dir={root / 'core'}", "train.steps=4"]))
    return {"root": root, "data": data, "precision": request.param}


def test_init_from_keeps_the_loaded_weights(core):
    run = core["root"] / "init_from"
    train(load("configs/tiny/core.yaml", core["data"] + NEGLIGIBLE + [
        f"train.run_dir={run}", f"train.init_from={core['root'] / 'core'}", "train.steps=1"]))
    assert_held(weights(core["root"] / "core"), weights(run))


# An x prediction's loss weighs x up to 400x near t = 0: a step's 4 images read 1.9x the 64
# continuity samples' loss here, which the continuity check reports (as it should, it cannot tell).
@pytest.mark.filterwarnings("ignore::harness.train.continuity.ContinuityWarning")
@pytest.mark.parametrize("prediction", ["v", "x"])
def test_grow_frozen_then_finetune_keep_the_loaded_weights(core, prediction):
    """core -> tools/grow.py -> grow-frozen (1 step) -> grow-finetune from it (1 step); the grown
    stages' network predicting v as the core's does, or x (a new output layer, growing allows it)."""
    root, data = core["root"], core["data"] + GROWN + NEGLIGIBLE + [f"diffusion.prediction={prediction}"]
    frozen = load("configs/tiny/grow-frozen.yaml", data + [f"train.run_dir={root / prediction / 'frozen'}",
                                                           "train.steps=1"])
    step0, _ = grow(root / "core", frozen, initialize_layout(1, 1))
    train(frozen)
    assert_held(weights(step0), weights(root / prediction / "frozen"))
    finetune = load("configs/tiny/grow-finetune.yaml", data + [
        f"train.run_dir={root / prediction / 'finetune'}", f"train.init_from={root / prediction / 'frozen'}",
        "train.steps=1"])
    train(finetune)
    assert_held(weights(root / prediction / "frozen"), weights(root / prediction / "finetune"))


def test_a_checkpoint_that_predicts_another_quantity_is_refused_and_kept(core, tmp_path):
    """init_from or a resume into a network that predicts x from one that predicts v: one line naming
    the checkpoint and the key, before any step; the run directory's checkpoint is not set aside."""
    root, data = core["root"], core["data"] + ["diffusion.prediction=x", "train.steps=5"]
    with pytest.raises(io.IncompatibleCheckpoint, match=r"core/step_0000004: its network predicts v \(diffusion"):
        train(load("configs/tiny/core.yaml", data + [f"train.run_dir={tmp_path / 'new'}",
                                                     f"train.init_from={root / 'core'}"]))
    resumed = tmp_path / "resumed"
    shutil.copytree(root / "core", resumed)
    with pytest.raises(io.IncompatibleCheckpoint, match="diffusion.prediction=v"):
        train(load("configs/tiny/core.yaml", data + [f"train.run_dir={resumed}"]))
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in (root / "core").iterdir())


@pytest.mark.parametrize("stage", ["grow-frozen", "grow-finetune"])
def test_grown_checkpoint_is_the_core_written_through_the_grown_model(core, stage):
    """Growing copies the carried core's stored bytes (splice.py) instead of writing them through the
    model. Every stored tensor equals that of a checkpoint written the slow way: the core's EMA
    loaded into the grown stage (new levels from the same seeded constructors), then saved; the
    carried weights are the fp32 EMA bytes, equal once rounded to the run's weight dtype as a load
    rounds them. Growing straight into fine-tuning also gives the trained core its optimizer main
    copies. The grown checkpoint stays whole after its source is gone."""
    root, layout = core["root"] / stage, initialize_layout(1, 1)
    cfg = lambda run: load(f"configs/tiny/{stage}.yaml", core["data"] + GROWN + [  # noqa: E731
        f"train.run_dir={run}", "train.init_from="])
    source = Path(shutil.copytree(io.resolve(core["root"] / "core"), root / "source" / "step_core"))
    spliced, plan = grow(source, cfg(root / "spliced"), layout)
    assert (spliced / CARRIED_FILE).is_file()
    frozen = list(plan.carried) if stage == "grow-frozen" else []
    reference = TrainingStage.build(cfg(root / "reference"), layout, frozen=frozen,
                                    tokenizer=bundled_tokenizer(source), initialize_core=False)
    core_ema = io.read_tensors(source, "ema.")
    reference.assign({k: core_ema[k] for k in plan.carried})
    written = reference.save(root / "reference", TrainState(lineage=io.read_meta(spliced)["lineage"]))
    expected = io.read_tensors(written)
    shutil.rmtree(source)                                 # the grown checkpoint holds its own bytes
    found = io.read_tensors(spliced)
    assert found.keys() == expected.keys()
    for key, tensor in expected.items():
        carried = key.partition(".")[2] in plan.carried
        assert found[key].dtype == tensor.dtype or (carried and key.startswith("model.")), key
        assert torch.equal(found[key].to(tensor.dtype), tensor), key
    _, state = load_stage(spliced, layout)                # restores in its precision
    assert state.step == 0 and io.read_meta(spliced)["frozen"] == sorted(frozen)
    trained_core = [k for k in expected if k.startswith("optimizer.") and ".core." in k]
    assert bool(trained_core) == (stage == "grow-finetune")


def test_import_then_resume_keeps_the_imported_weights(core):
    root = core["root"]
    release = export_safetensors(io.resolve(root / "core"), root / "release.safetensors")
    imported = import_safetensors(release, root / "imported", initialize_layout(1, 1), NEGLIGIBLE)
    step = io.read_meta(imported)["step"]
    train(load("configs/tiny/core.yaml", core["data"] + NEGLIGIBLE + [
        f"train.run_dir={root / 'imported'}", f"train.steps={step + 1}"]))
    assert io.read_meta(io.latest_checkpoint(root / "imported"))["step"] == step + 1
    assert_held(weights(imported), weights(root / "imported"))


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_resume_continues_exactly(core):
    """Stopped after 2 steps and resumed, a run logs the uninterrupted run's losses bit for bit and
    ends on the same weights (the optimizer's fp32 main copies travel in the checkpoint)."""
    root, data = core["root"], core["data"]
    common = data + ["train.steps=4", "optim.decay_steps=4", "train.ckpt_every_steps=2"]
    train(load("configs/tiny/core.yaml", common + [f"train.run_dir={root / 'split'}", "train.steps=2"]))
    train(load("configs/tiny/core.yaml", common + [f"train.run_dir={root / 'split'}"]))
    assert _losses(root / "split") == _losses(root / "core")
    assert max_change(weights(root / "core"), weights(root / "split")) == 0
    meta = io.read_meta(io.latest_checkpoint(root / "split"))
    assert meta["step"] == 4 and meta["consumed_samples"] == 16 and meta["stage"] == "core"
    assert meta["config"]["train"]["steps"] == 4 and meta["layout"]["dp"] == 1
    assert meta["precision"] == core["precision"] and meta["loss"] == _losses(root / "core")[-1]
    from PIL import Image
    for name, size in (("loss.png", (720, 420)), ("samples.png", (100 + 2 * 128, 2 * 128 + 44))):
        png = Image.open(root / "core" / name)
        assert png.size == size, name                          # loss: 6 x 3.5 in at 120 dpi; samples: 2 x 2 cells
        assert np.asarray(png.convert("L")).std() > 1, name    # not a constant image


def test_sampling_during_training_leaves_the_run_unchanged(core):
    """Sample grids swap the EMA weights in and out of the model between steps; the losses and the
    final weights must be those of the run that did not sample."""
    run = core["root"] / "sampled"
    train(load("configs/tiny/core.yaml", core["data"] + [f"train.run_dir={run}", "train.steps=4",
                                                         "train.sample_every_steps=2"]))
    assert (run / "samples_step0000002.png").is_file()
    assert _losses(run) == _losses(core["root"] / "core")
    assert max_change(weights(core["root"] / "core"), weights(run)) == 0


def test_num_samples_0_writes_no_sample_grids(core):
    run = core["root"] / "unsampled"
    train(load("configs/tiny/core.yaml", core["data"] + [f"train.run_dir={run}", "train.steps=2",
                                                         "train.sample_every_steps=1", "train.num_samples=0"]))
    assert (run / "loss.png").is_file() and not list(run.glob("samples*.png"))


def test_the_first_log_of_a_stage_shows_the_loaded_loss(core):
    """init_from logs the loaded weights' loss next to the source's last logged one; no warning."""
    run = core["root"] / "continuity"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContinuityWarning)
        train(load("configs/tiny/core.yaml", core["data"] + [
            f"train.run_dir={run}", f"train.init_from={core['root'] / 'core'}", "train.steps=1"]))
    first = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert first["source_loss"] == io.read_meta(io.resolve(core["root"] / "core"))["loss"]
    assert 0 < first["start_loss"] < 1.5 * first["source_loss"]


def test_a_loss_jump_at_the_boundary_is_a_warning_naming_both_numbers(core, tmp_path):
    """A source whose logged loss the loaded weights cannot reproduce (here: meta.json says 0.01)."""
    source = tmp_path / "source"
    shutil.copytree(io.resolve(core["root"] / "core"), source)
    meta = json.loads((source / "meta.json").read_text())
    (source / "meta.json").write_text(json.dumps({**meta, "loss": 0.01}))
    with pytest.warns(ContinuityWarning, match=r"jumped \d+\.\dx at the stage boundary: 0\.\d+ .* vs 0\.0100"):
        train(load("configs/tiny/core.yaml", core["data"] + [
            f"train.run_dir={tmp_path / 'run'}", f"train.init_from={source}", "train.steps=1"]))


def test_a_loss_rise_in_the_first_steps_is_a_warning():
    c = Continuity(Path("ckpt"), 0.60, rank=0)
    assert c.score(lambda: 0.62, samples=64, global_batch=32) == {"start_loss": 0.62, "source_loss": 0.60}
    with pytest.warns(ContinuityWarning, match=r"rose 1\.6x in the first steps .* 0\.6200 .* 0\.9900 logged at step 25"):
        c.first_logged(0.99, 25)
    c.first_logged(5.0, 50)          # only the first logged loss is compared


def test_split_gradient_buckets_save_each_parameter_under_its_own_name(world, tiny_data, tmp_path):
    """bf16 with the distributed optimizer and the gradient buffer split into many buckets (as
    parallel.overlap_grad_reduce with a bucket_size does): every saved fp32 main copy rounds to the
    bf16 weight saved beside it (Megatron-core 0.16.1 shifted all but the first bucket's)."""
    run = tmp_path / "buckets"
    train(load("configs/tiny/core.yaml", _data(tiny_data, "bf16") + [
        f"train.run_dir={run}", "train.steps=1", "parallel.overlap_grad_reduce=true", "parallel.bucket_size=2000"]))
    model = io.read_tensors(io.resolve(run), "model.")
    main = io.read_tensors(io.resolve(run), "optimizer.state.param.model.")
    assert main.keys() == model.keys() and len(model) > 8
    wrong = [k for k in model if not torch.equal(main[k].to(torch.bfloat16), model[k])]
    assert wrong == []
