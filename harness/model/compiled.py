"""train.compile: torch.compile (inductor) where eager PyTorch spends a step's time outside the
convolutions and matmuls: the norms, SiLUs, modulations and residual adds, each a separate pass over
memory in eager mode, become fused kernels.

- Each ResBlock is compiled whole (`nn.Module.compile`, in place: parameter names, checkpoints and
  recomputation through torch.utils.checkpoint are unchanged). All ResBlocks share one forward;
  each level's shapes are a guarded variant of the same compiled code.
- In each core layer only the adaLN modulation and the gated residuals are compiled: they are pure
  tensor functions between Megatron's linears, so the tensor-parallel collectives, sequence
  parallelism and tensor_parallel.checkpoint run eager, exactly as Megatron runs them.
"""

from __future__ import annotations

import torch

from harness.model.blocks import ResBlock
from harness.model.core import CoreLayer, gated_residual, modulate


def apply_compile(model: torch.nn.Module) -> None:
    """Compile `model`'s ResBlocks and core-layer elementwise functions, in place."""
    fused_modulate, fused_residual = torch.compile(modulate), torch.compile(gated_residual)
    for module in model.modules():
        if isinstance(module, ResBlock):
            module.compile()
        elif isinstance(module, CoreLayer):
            module.modulate, module.gated_residual = fused_modulate, fused_residual
