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
    with pytest.raises(Exception, match="nowhere"):
        train(cfg)
    assert not list((tmp_path / "run").glob("step_*"))


def test_fused_adamw_matches_the_reference_update():
    """Megatron builds torch's AdamW unfused; the harness switches the fused kernel on."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 32)) for _ in range(2)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(5)]
    results = []
    for fused in (False, True):
        ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
        opt = torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=fused)
        for g in grads:
            for p, gi in zip(ps, g):
                p.grad = gi.clone()
            opt.step()
        results.append(ps)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
