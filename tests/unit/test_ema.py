"""The EMA's fused (foreach) update and swap equal the per-tensor definition, in fp32 and bf16."""

import pytest
import torch
from torch import nn

from harness.model.ema import EMA


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_foreach_update_and_swap_match_the_per_tensor_definition(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)).to(dtype)
    model[1].weight.requires_grad_(False)                   # a frozen tensor is not averaged
    ema = EMA(model, decay=0.99)
    reference = {k: v.clone() for k, v in ema.shadow.items()}
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p))
        ema.update(model, n)
        decay = min(0.99, (1 + n) / (10 + n))
        for name, p in model.named_parameters():
            if p.requires_grad:
                reference[name].lerp_(p.detach().float(), 1 - decay)
    assert all(torch.equal(ema.shadow[k], reference[k]) for k in reference)
    assert torch.equal(ema.shadow["1.weight"], model[1].weight.float())     # frozen: what it was built from
    trained = {name: p.detach().clone() for name, p in model.named_parameters()}
    with ema.applied(model):
        assert all(torch.equal(p, reference[name].to(dtype)) for name, p in model.named_parameters())
    assert all(torch.equal(p, trained[name]) for name, p in model.named_parameters())
