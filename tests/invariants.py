"""The stage-boundary invariant, shared by the unit and multi-process tiers.

A stage started from a checkpoint, after one optimizer step at a negligible learning rate
(NEGLIGIBLE: 1e-12, no warm-up, no weight decay), still holds the weights it loaded:

- every weight moves by at most BOUND = 1e-9 (Adam moves an element by at most ~10 x lr), except
- in bf16, where a weight whose fp32 main copy lies within 1e-9 of a rounding boundary may round
  to the neighbouring bf16 value: at most one bf16 step (2^-8 relative), for at most 0.1% of the
  elements.

An optimizer whose fp32 main copies are stale (made before the load) moves nearly every element,
by the size of training itself (~1e-3 in these tests).
"""

from __future__ import annotations

import torch

from harness.checkpoint import io

NEGLIGIBLE = ["optim.lr=1e-12", "optim.min_lr=0", "optim.warmup_steps=0", "optim.weight_decay=0"]
BOUND = 1e-9
ROUNDED_FRACTION = 1e-3


def weights(ckpt, family: str = "model.") -> dict[str, torch.Tensor]:
    """Full tensors of one family of a checkpoint (or run directory) as a run at its precision loads
    them, in fp32. (A grown step-0 checkpoint stores its carried weights as the source's fp32 EMA
    bytes, which a bf16 run rounds as it loads them: harness/checkpoint/splice.py.)"""
    ckpt = io.resolve(ckpt)
    bf16 = family == "model." and io.read_meta(ckpt)["precision"] == "bf16"
    return {k: (v.bfloat16() if bf16 else v).float() for k, v in io.read_tensors(ckpt, family).items()}


def max_change(before: dict, after: dict) -> float:
    """Largest absolute difference between two sets of the same tensors."""
    assert before.keys() == after.keys()
    return max((after[k] - before[k]).abs().max().item() for k in before)


def bf16_step(w: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 values at |w| (8 significant bits); 0 where w is 0."""
    exponent = torch.floor(torch.log2(w.abs().clamp_min(torch.finfo(torch.float32).tiny)))
    return torch.where(w == 0, torch.zeros_like(w), torch.exp2(exponent - 7))


def assert_held(before: dict, after: dict) -> None:
    """Raise unless `after` holds the weights of `before` within the bound of this module."""
    assert before.keys() == after.keys()
    moved, total, worst = 0, 0, []
    for k in before:
        d = (after[k] - before[k]).abs()
        beyond = d > BOUND + bf16_step(before[k])
        if beyond.any():
            worst.append(f"{k}: {d.max().item():.3e}")
        moved += int((d > BOUND).sum())
        total += d.numel()
    assert not worst, f"weights moved by more than {BOUND} or one bf16 step: {', '.join(worst[:5])}"
    assert moved <= ROUNDED_FRACTION * total, f"{moved} of {total} weights moved by more than {BOUND}"
