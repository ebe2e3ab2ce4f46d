"""Greedy growing: every key accounted for, the core carried bit for bit, the frozen phase."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from harness.checkpoint import io
from harness.checkpoint.sharded import model_sharded_state_dict
from harness.config import ModelConfig, load
from harness.data.tokenizer import TOKENIZER_FILE
from harness.growth.grow import grow
from harness.growth.rules import GrowthError, frozen_for_stage, plan_growth
from harness.model.uvit import build_model
from harness.parallel.layout import initialize_layout
from harness.train.loop import train


def _shapes(model) -> dict:
    return {k: tuple(sh.global_shape) for k, sh in model_sharded_state_dict(model).items()}


@pytest.fixture(scope="module")
def shapes(world):
    build = lambda arch, res: _shapes(build_model(ModelConfig(size="tiny", arch=arch, resolution_px=res),  # noqa: E731
                                                  vocab_size=50, text_dim=None, seed=0))
    return {"shallow": build("shallow", 64), "g128": build("grown", 128), "g256": build("grown", 256)}


def test_every_key_is_accounted_for(shapes):
    src, dst = shapes["shallow"], shapes["g128"]
    plan = plan_growth(src, dst, "shallow", "grown", 64, 128)
    assert set(plan.carried) | set(plan.dropped) == set(src)
    assert set(plan.carried) | set(plan.new) == set(dst)
    assert all(k.startswith(("cond.", "core.")) for k in plan.carried)
    assert {k.split(".")[0] for k in plan.dropped} == {"stem", "enc", "dec", "head"}


def test_growing_again_keeps_the_existing_levels(shapes):
    plan = plan_growth(shapes["g128"], shapes["g256"], "grown", "grown", 128, 256)
    assert "enc.2.0.conv1.weight" in plan.carried and "dec.0.0.conv1.weight" in plan.carried
    assert {k.split(".")[0] for k in plan.dropped} == {"stem", "head"}
    assert any(k.startswith("enc.3.") for k in plan.new) and "stem.weight" in plan.new


def test_renamed_or_reshaped_keys_fail_with_their_names(shapes):
    src = dict(shapes["shallow"])
    src["core.layers.0.mlp.fc9.weight"] = src.pop("core.layers.0.mlp.linear_fc1.weight")
    src["cond.time.0.weight"] = (7, 7)
    src["extra.thing"] = (3,)
    with pytest.raises(GrowthError) as e:
        plan_growth(src, shapes["g128"], "shallow", "grown", 64, 128)
    message = str(e.value)
    assert "core.layers.0.mlp.fc9.weight" in message and "no place in the target" in message
    assert "cond.time.0.weight (7, 7)" in message and "extra.thing" in message
    with pytest.raises(GrowthError, match="higher resolution than the source"):
        plan_growth(shapes["g128"], shapes["g128"], "grown", "grown", 128, 128)
    with pytest.raises(GrowthError, match="no growth rule"):
        plan_growth(shapes["g128"], shapes["shallow"], "grown", "shallow", 128, 64)


def test_grow_frozen_needs_a_grown_checkpoint():
    with pytest.raises(GrowthError, match="tools/grow.py"):
        frozen_for_stage("grow-frozen", None)
    assert frozen_for_stage("grow-finetune", {"frozen": ["x"]}) == []


def _stored(ckpt, family: str, prefixes=("cond.", "core.")) -> dict[str, torch.Tensor]:
    return {k: v for k, v in io.read_tensors(ckpt, family).items() if k.startswith(prefixes)}


@pytest.fixture(scope="module")
def grown(world, tiny_data, tmp_path_factory):
    """A tiny core trained 3 steps, grown to 128 px (step-0 checkpoint), then 3 grow-frozen steps."""
    root = tmp_path_factory.mktemp("growth")
    data = [f"data.path={tiny_data / 'train'}", f"data.heldout_path={tiny_data / 'heldout'}",
            "train.matmul_precision=highest", "train.log_every_steps=1", "diffusion.sample_steps=2", "train.num_samples=2"]
    train(load("configs/tiny/core.yaml", data + [f"train.run_dir={root / 'core'}", "train.steps=3"]))
    frozen_cfg = load("configs/tiny/grow-frozen.yaml", data + [f"train.run_dir={root / 'frozen'}", "train.steps=3"])
    step0, plan = grow(root / "core", frozen_cfg, initialize_layout(1, 1))
    return {"root": root, "data": data, "step0": step0, "plan": plan, "frozen_cfg": frozen_cfg}


def test_grown_checkpoint_carries_core_bit_for_bit(grown):
    core = io.resolve(grown["root"] / "core")
    meta = io.read_meta(grown["step0"])
    for family in ("model.", "ema."):
        before = _stored(core, "ema.")                    # grow.py carries the EMA weights by default
        after = _stored(grown["step0"], family)
        assert before.keys() == after.keys() and len(after) == len(grown["plan"].carried)
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert meta["stage"] == "grow-frozen" and meta["step"] == 0
    assert sorted(meta["frozen"]) == sorted(grown["plan"].carried)
    assert meta["lineage"][-1]["checkpoint"] == str(core.resolve()) and meta["lineage"][-1]["dropped"]
    assert any(k.startswith("optimizer.") for k in io.stored_shapes(grown["step0"]))


def test_grown_model_starts_as_the_zero_predictor(grown):
    """Well-behaved at step 0: finite, v = 0 everywhere (zero exit convolution), so the loss is E[v^2]."""
    from harness.eval.load import load_for_inference
    from harness.model.conditioning import TextInput
    loaded = load_for_inference(grown["step0"], grown["data"], use_ema=False)
    text = TextInput(lengths=torch.tensor([3, 5]), tokens=torch.randint(3, 20, (2, 16)))
    v = loaded.model(torch.randn(2, 3, 128, 128), torch.rand(2), text)
    assert torch.isfinite(v).all() and v.abs().max() == 0


def test_frozen_phase_trains_only_new_layers(grown):
    run = grown["root"] / "frozen"
    train(grown["frozen_cfg"])                            # resumes grow.py's step-0 checkpoint
    after = io.latest_checkpoint(run)
    assert io.read_meta(after)["step"] == 3
    for family in ("model.", "ema."):
        carried_before, carried_after = _stored(grown["step0"], family), _stored(after, family)
        assert all(torch.equal(carried_before[k], carried_after[k]) for k in carried_before)
    new_before = _stored(grown["step0"], "model.", ("enc.", "up.", "head."))
    new_after = _stored(after, "model.", ("enc.", "up.", "head."))
    changed = {k for k in new_before if not torch.equal(new_before[k], new_after[k])}
    # zero-initialised branches move first: the exit convolution and each block's second convolution
    assert {"head.2.weight", "enc.0.0.conv2.weight", "enc.2.0.conv2.weight"} <= changed


def test_growth_optimizer_state_is_fresh(grown, tmp_path):
    """Starting from grow.py's saved optimizer state trains exactly like a fresh optimizer."""
    cfg = lambda run, extra: load("configs/tiny/grow-frozen.yaml", grown["data"] + [  # noqa: E731
        f"train.run_dir={run}", "train.steps=2"] + extra)
    resumed, fresh = tmp_path / "resumed", tmp_path / "fresh"
    grow(grown["root"] / "core", cfg(resumed, []), initialize_layout(1, 1))
    train(cfg(resumed, []))
    train(cfg(fresh, [f"train.init_from={grown['step0']}"]))
    losses = [[json.loads(x)["loss"] for x in (r / "log.jsonl").read_text().splitlines()] for r in (resumed, fresh)]
    assert losses[0] == losses[1] and len(losses[0]) == 2


def test_stage_outlives_its_pruned_start_checkpoint(grown, tmp_path):
    """grow.py's step-0 checkpoint lives in the stage's own run folder and is pruned by later saves;
    the saves after that still bundle the tokenizer the stage started with."""
    run = tmp_path / "frozen"
    cfg = load("configs/tiny/grow-frozen.yaml", grown["data"] + [
        f"train.run_dir={run}", "train.steps=3", "train.ckpt_every_steps=1", "train.keep_checkpoints=1"])
    step0, _ = grow(grown["root"] / "core", cfg, initialize_layout(1, 1))
    tokenizer = (step0 / TOKENIZER_FILE).read_bytes()
    train(cfg)
    assert sorted(p.name for p in run.glob("step_*")) == ["step_0000003"]
    assert (run / "step_0000003" / TOKENIZER_FILE).read_bytes() == tokenizer


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_grow_from_a_damaged_core_names_the_file_and_writes_nothing(grown, tmp_path, damage):
    """Growing copies the core's bytes from its shard files: a damaged one is refused before any
    save, by name, and the stage's run folder gets no checkpoint."""
    source = Path(shutil.copytree(io.resolve(grown["root"] / "core"), tmp_path / "core" / "step_0000003"))
    shard = max(source.glob("*.distcp"), key=lambda p: p.stat().st_size)
    if damage == "truncated":
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)
    else:
        shard.unlink()
    run = tmp_path / "frozen"
    cfg = load("configs/tiny/grow-frozen.yaml", grown["data"] + [f"train.run_dir={run}"])
    with pytest.raises(io.CheckpointError, match=f"{shard}: {damage}"):
        grow(source, cfg, initialize_layout(1, 1))
    assert not (run / io.LATEST).exists() and not list(run.glob("step_*"))


def test_a_grow_that_fails_after_its_copy_started_leaves_nothing(grown, tmp_path):
    """The carried bytes are copied into a staging file while the grown stage is built: a grow that
    fails after that (here its plan: the target is not of a higher resolution) removes the file and
    writes no checkpoint."""
    run = tmp_path / "frozen"
    cfg = load("configs/tiny/grow-frozen.yaml", grown["data"] + [f"train.run_dir={run}", "model.resolution_px=64"])
    with pytest.raises(GrowthError, match="higher resolution than the source"):
        grow(grown["root"] / "core", cfg, initialize_layout(1, 1))
    assert list(run.iterdir()) == []
