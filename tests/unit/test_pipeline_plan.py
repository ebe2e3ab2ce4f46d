"""Pure pipeline planning: layer splits and the packing of stage state into one tensor."""

import pytest
import torch

from harness.model.uvit import StageState
from harness.parallel.pipeline import PackSpec, pack, split_layers


@pytest.mark.parametrize("layers, pp, counts", [(8, 1, [8]), (8, 2, [4, 4]), (30, 4, [7, 8, 8, 7]),
                                                (7, 3, [2, 3, 2]), (5, 5, [1] * 5)])
def test_even_split_gives_the_remainder_to_middle_stages(layers, pp, counts):
    stages = split_layers(layers, pp)
    assert [len(r) for r in stages] == counts
    assert [i for r in stages for i in r] == list(range(layers))


def test_explicit_and_impossible_splits():
    assert [len(r) for r in split_layers(6, 2, [2, 4])] == [2, 4]
    with pytest.raises(ValueError, match="summing to 6"):
        split_layers(6, 2, [2, 2])
    with pytest.raises(ValueError, match="cannot exceed the core's 2 layers"):
        split_layers(2, 3)


def test_pack_unpack_round_trip_and_gradients():
    from harness.parallel.pipeline import unpack
    b, h = 3, 8
    spec = PackSpec(hidden=h, tokens=4, text_len=5, skips=((3, 4), (2, 2)))
    pieces = dict(hidden=torch.randn(4, b, h), mod=torch.randn(b, 6, h), context=torch.randn(b, 5, h),
                  context_valid=torch.rand(b, 5) > 0.5, cond=torch.randn(b, h),
                  skips=[torch.randn(b, 3, 4, 4), torch.randn(b, 2, 2, 2)])
    leaves = [pieces["hidden"], pieces["mod"], pieces["context"], pieces["cond"], *pieces["skips"]]
    for x in leaves:
        x.requires_grad_(True)
    packed = pack(StageState(**pieces), spec)
    assert packed.shape == (spec.rows(), b, h)
    out = unpack(packed, spec)
    for name in ("hidden", "mod", "context", "cond"):
        assert torch.equal(getattr(out, name), pieces[name])
    assert torch.equal(out.context_valid, pieces["context_valid"])
    assert all(torch.equal(x, y) for x, y in zip(out.skips, pieces["skips"]))
    (out.hidden.sum() + out.skips[1].sum() * 2).backward()
    assert torch.equal(pieces["hidden"].grad, torch.ones_like(pieces["hidden"]))
    assert torch.equal(pieces["skips"][1].grad, torch.full_like(pieces["skips"][1], 2.0))
    assert pieces["mod"].grad.abs().sum() == 0
