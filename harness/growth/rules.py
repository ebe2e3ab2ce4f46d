"""Growth rules as data: which parameters carry from stage to stage, which train in each stage."""

from __future__ import annotations

from torch import nn

CARRIED_PREFIXES = ("cond.", "core.")
"""Parameters kept when a model grows (text/time conditioning and the core); all others are
per-architecture: dropped from the smaller model, newly initialised in the grown one."""

FROZEN_PREFIXES = {"core": (), "grow-frozen": CARRIED_PREFIXES, "grow-finetune": ()}
"""Per stage, parameters that get no gradient and are not in the optimizer."""


def freeze_for_stage(model: nn.Module, stage: str) -> list[str]:
    """Set requires_grad for `stage`; return the names of the frozen parameters."""
    prefixes = FROZEN_PREFIXES[stage]
    frozen = []
    for name, p in model.named_parameters():
        p.requires_grad_(not (prefixes and name.startswith(prefixes)))
        if not p.requires_grad:
            frozen.append(name)
    return frozen
