"""Training end to end on the tiny model: atomic checkpoints, bad inputs (exact resume: test_stage_boundaries)."""

import pytest
import torch

from harness.checkpoint import io
from harness.config import load
from harness.train.loop import train


def test_crash_during_save_keeps_last_good_checkpoint(world, tiny_overrides, tmp_path, monkeypatch):
    run = tmp_path / "crash"
    args = tiny_overrides + [f"train.run_dir={run}", "train.steps=4", "train.ckpt_every_steps=2", "optim.decay_steps=4"]
    real_save = io.dist_checkpointing.save

    def crash_on_second(state, path):
        real_save(state, path)
        if "step_0000004" in str(path):
            raise KeyboardInterrupt("simulated crash after the shards, before meta.json and the rename")
    monkeypatch.setattr(io.dist_checkpointing, "save", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train(load(None, args))
    assert (run / "latest").read_text().strip() == "step_0000002"
    assert (run / ".tmp-step_0000004").is_dir() and not (run / "step_0000004").exists()
    monkeypatch.setattr(io.dist_checkpointing, "save", real_save)
    train(load(None, args))                           # resumes from step 2, overwrites the leftover
    assert (run / "latest").read_text().strip() == "step_0000004"
    assert not (run / ".tmp-step_0000004").exists()


def test_corrupt_latest_pointer_names_the_file(tmp_path):
    (tmp_path / "latest").write_text("step_0000009\n")
    with pytest.raises(io.CheckpointError, match="latest: points to step_0000009, which is not a complete checkpoint"):
        io.latest_checkpoint(tmp_path)


def test_missing_data_set_fails_before_training(world, tiny_overrides, tmp_path):
    cfg = load(None, tiny_overrides + [f"data.path={tmp_path / 'nowhere'}", "train.steps=1"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(cfg)
    assert not list((tmp_path / "run").glob("step_*"))


def test_build_optimizer_uses_fused_adamw_with_the_reference_update(world):
    """Megatron builds torch's AdamW unfused; build_optimizer switches the fused kernel on, and the
    fused update equals an unfused AdamW's with the same hyper-parameters."""
    from harness.checkpoint.stage import TrainingStage
    from harness.parallel.ddp import _torch_optimizers, build_optimizer

    cfg = load(None, ["model.size=tiny", "parallel.global_batch=8", "parallel.micro_batch=4", "train.precision=fp32",
                      "optim.weight_decay=0.1"])
    stage = TrainingStage.build(cfg, world, vocab_size=64)
    optimizer, _ = build_optimizer(stage.ddp, cfg)
    inner = _torch_optimizers(optimizer)
    assert inner and all(isinstance(opt, torch.optim.AdamW) for opt in inner)
    assert all(g["fused"] is True and g["foreach"] is False for opt in inner for g in opt.param_groups)

    g = torch.Generator().manual_seed(0)
    for opt in inner:
        for group in opt.param_groups:
            group["lr"] = 1e-2                        # the schedule starts at 0 (warm-up)
        before = [p.detach().clone() for group in opt.param_groups for p in group["params"]]
        reference = torch.optim.AdamW(
            [{**{k: v for k, v in group.items() if k != "params"}, "fused": False, "foreach": False,
              "params": [torch.nn.Parameter(p.detach().clone()) for p in group["params"]]}
             for group in opt.param_groups])
        for _ in range(3):
            for group, ref_group in zip(opt.param_groups, reference.param_groups):
                for p, r in zip(group["params"], ref_group["params"]):
                    p.grad = torch.randn(p.shape, generator=g)
                    r.grad = p.grad.clone()
            opt.step()
            reference.step()
        fused = [p for group in opt.param_groups for p in group["params"]]
        unfused = [p for group in reference.param_groups for p in group["params"]]
        assert any(not torch.equal(a, b) for a, b in zip(fused, before))
        for a, b in zip(fused, unfused):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
