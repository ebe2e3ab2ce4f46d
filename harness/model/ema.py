"""Exponential moving average of the weights (sampling uses it), kept in fp32."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    """Shadow copies of a model's parameters, updated after each optimizer step.

    The decay warms up as min(decay, (1 + n) / (10 + n)) at update n, so a short run's average
    is not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, *, uninitialised: tuple[str, ...] = ()):
        """`uninitialised`: name prefixes of parameters built without an initialisation, which the
        caller overwrites (growing): their shadow is allocated, not copied from garbage (an 8 B core
        would read and write 32 GB for nothing)."""
        self.decay = decay
        self.shadow = {name: torch.empty(p.shape, dtype=torch.float32, device=p.device)
                       if name.startswith(uninitialised) else p.detach().float().clone()
                       for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        """Fold the current weights in; `num_updates` counts updates before this one. One fused
        `_foreach_lerp_` over the trained parameters (`.float()` upcasts bf16, a no-op for fp32)."""
        decay = min(self.decay, (1 + num_updates) / (10 + num_updates))
        trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if trained:
            torch._foreach_lerp_([self.shadow[name] for name, _ in trained],
                                 [p.detach().float() for _, p in trained], 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """Run a block with the averaged weights in the model, restoring the trained ones after."""
        names, params = zip(*model.named_parameters())
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(list(params), [self.shadow[name] for name in names])
        try:
            yield model
        finally:
            with torch.no_grad():
                torch._foreach_copy_(list(params), backup)
