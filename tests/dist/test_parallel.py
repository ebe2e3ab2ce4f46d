"""TP / PP / DP against one process: same weights and data, three optimizer steps.

Launches of 2 and 4 gloo processes cover TP=2, PP=2, DP=2, TP=2xPP=2, TP=2xDP=2, PP=2xDP=2 and DP=4
with the distributed optimizer; sequence parallelism at TP=2 and TP=2xPP=2; recomputation at TP=2
and PP=2; overlapped gradient reduce and parameter gather at DP=2 and DP=4. Each layout's gradients
(third step) and weights (after it) are written with dist_checkpointing and read back at TP=PP=1
here, against the one-process reference; recomputed runs also against their own layout without it.
"""

import json

import pytest
import torch
from launching import REPO, launch
from megatron.core import dist_checkpointing
from parity_worker import run_layout

from harness.checkpoint.sharded import model_sharded_state_dict, with_prefix
from harness.config import ModelConfig
from harness.data.tokenizer import Tokenizer
from harness.model.uvit import build_model

TOL = 1e-5
BF16_TOL = 2e-2     # bf16 keeps 8 bits: a sum in another order moves a value by up to ~2^-8 per rounding


@pytest.fixture(scope="module")
def reference(world, tiny_data, tmp_path_factory):
    """The one-process runs, with and without the distributed optimizer."""
    out = tmp_path_factory.mktemp("reference")
    run_layout(tiny_data, out / "plain", 1, 1, distributed_optimizer=False)
    run_layout(tiny_data, out / "zero", 1, 1, distributed_optimizer=True)
    return out


def _read(path, prefix: str, vocab: int) -> dict[str, torch.Tensor]:
    """A dump written at any layout (grads or weights), as plain tensors at TP=PP=1."""
    base = model_sharded_state_dict(build_model(ModelConfig(size="tiny"), vocab_size=vocab, text_dim=None, seed=99))
    loaded = dist_checkpointing.load(with_prefix(base, prefix, {k: torch.zeros_like(s.data) for k, s in base.items()}),
                                     str(path))
    return {k.removeprefix(prefix): v for k, v in loaded.items()}


def _relative(ours: dict, ref: dict) -> float:
    """Max over tensors of max|a - b| / max|b|. A tensor under 1% of the largest one is measured
    against that 1%: its values are sums of much larger terms (e.g. gradients through the
    zero-initialised exit convolution, ~1e-10) and carry their float32 rounding."""
    floor = 1e-2 * max(t.abs().max().item() for t in ref.values())
    return max((ours[k] - ref[k]).abs().max().item() / max(ref[k].abs().max().item(), floor) for k in ref)


def _differences(layout_dir, ref_dir, vocab: int) -> dict[str, float]:
    """Max relative difference of losses, weights and (where dumped) gradients."""
    losses = json.loads((layout_dir / "losses.json").read_text())
    ref_losses = json.loads((ref_dir / "losses.json").read_text())
    worst = {"loss": max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))}
    for kind, prefix in (("weights", "model."), ("grads", "grad.")):
        if (layout_dir / kind).exists():
            ours, ref = _read(layout_dir / kind, prefix, vocab), _read(ref_dir / kind, prefix, vocab)
            assert ours.keys() == ref.keys()
            worst[kind] = _relative(ours, ref)
    return worst


@pytest.mark.parametrize("nprocs, layouts, zero", [(2, "2x1,1x2,1x1", False), (4, "2x2,2x1,1x2", False),
                                                    (4, "1x1", True), (4, "2x1sp,2x2sp", False)])
def test_layouts_match_one_process(world, tiny_data, reference, tmp_path, nprocs, layouts, zero):
    args = [str(REPO / "tests/dist/parity_worker.py"), "--data", str(tiny_data), "--out", str(tmp_path),
            "--layouts", layouts] + (["--distributed-optimizer"] if zero else [])
    launch("torchrun", nprocs, args)
    vocab = Tokenizer(tiny_data / "train" / "tokenizer.model").vocab_size
    dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(dirs) == len(layouts.split(","))
    for d in dirs:
        worst = _differences(d, reference / ("zero" if zero else "plain"), vocab)
        print(f"{d.name}: max relative difference " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
        assert all(v < TOL for v in worst.values()), f"{d.name}: {worst}"


def test_an_x_prediction_trains_the_same_through_the_pipeline(world, tiny_data, tmp_path):
    """diffusion.prediction=x, whose loss needs z_t on the last pipeline stage: TP=2xPP=2 and
    PP=2xDP=2 with the distributed optimizer against one process, in fp32 to 1e-5; and PP=2xDP=2 in
    bf16 against one bf16 process, to bf16's rounding."""
    run_layout(tiny_data, tmp_path / "reference", 1, 1, True, "xp")
    run_layout(tiny_data, tmp_path / "reference_bf16", 1, 1, True, "xpbf")
    launch("torchrun", 4, [str(REPO / "tests/dist/parity_worker.py"), "--data", str(tiny_data), "--out", str(tmp_path),
                           "--layouts", "2x2xp,1x2xp,1x2xpbf", "--distributed-optimizer"])
    vocab = Tokenizer(tiny_data / "train" / "tokenizer.model").vocab_size
    for name, ref, tol in (("tp2_pp2_dp1_zero_xp", "reference", TOL), ("tp1_pp2_dp2_zero_xp", "reference", TOL),
                           ("tp1_pp2_dp2_zero_xpbf", "reference_bf16", BF16_TOL)):
        worst = _differences(tmp_path / name, tmp_path / ref, vocab)
        print(f"{name}: max relative difference " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
        assert all(v < tol for v in worst.values()), f"{name}: {worst}"


def test_recomputation_and_overlap_change_nothing(world, tiny_data, tmp_path):
    """fp32: TP=2 with the core recomputed, PP=2 with every ResBlock recomputed too, and DP=2 with
    the gradient reduce and parameter gather overlapped: gradients, weights and losses bit-identical
    to the same layout without them."""
    args = [str(REPO / "tests/dist/parity_worker.py"), "--data", str(tiny_data), "--out", str(tmp_path),
            "--layouts", "2x1,2x1rc,1x2,1x2rf"]
    launch("torchrun", 2, args)
    launch("torchrun", 2, [*args[:-1], "1x1,1x1ov", "--distributed-optimizer"])
    vocab = Tokenizer(tiny_data / "train" / "tokenizer.model").vocab_size
    for plain, other in (("tp2_pp1_dp1", "tp2_pp1_dp1_rc"), ("tp1_pp2_dp1", "tp1_pp2_dp1_rf"),
                         ("tp1_pp1_dp2_zero", "tp1_pp1_dp2_zero_ov")):
        assert json.loads((tmp_path / other / "losses.json").read_text()) == \
            json.loads((tmp_path / plain / "losses.json").read_text())
        for kind, prefix in (("weights", "model."), ("grads", "grad.")):
            if (tmp_path / plain / kind).exists():
                a, b = _read(tmp_path / plain / kind, prefix, vocab), _read(tmp_path / other / kind, prefix, vocab)
                assert [k for k in a if not torch.equal(a[k], b[k])] == [], f"{other} {kind}"
