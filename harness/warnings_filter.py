"""The one list of third-party warnings the harness hides, each matched by its message.

Each entry is a warning Megatron-core 0.16.1 or torch 2.13 prints on every run (several of them
once per step) that says nothing about the run: optional fused kernels that are absent, APIs they
deprecate in their own code. Everything else stays visible, the harness's own warnings (e.g.
harness.train.continuity.ContinuityWarning) above all. `install()` is called at start-up by the
training entry point (harness/train/__main__.py), by the command-line tools (harness/cli) and by
tests/conftest.py; setup.cfg's [tool:pytest] filterwarnings lists the same messages.

To hide another warning, add its message here with where it comes from; never filter by category
alone.
"""

from __future__ import annotations

import re
import warnings

# (category, regular expression matched against the start of the message, where it comes from)
KNOWN_HARMLESS: tuple[tuple[type[Warning], str, str], ...] = (
    (UserWarning, r"Transformer Engine and Apex are not installed",
     "megatron/core/optimizer/__init__.py, optimizer.py, clip_grads.py, megatron_fsdp/mixed_precision.py: "
     "optional fused kernels absent, Megatron uses its torch fallbacks"),
    (UserWarning, r"Apex is not installed\. Falling back to Torch Norm",
     "megatron/core/models/backends.py: the harness builds its norms itself"),
    (UserWarning, r"full scope is deprecated",
     "megatron/core/transformer/transformer_config.py: a CUDA-graph default the harness does not use"),
    (UserWarning, r"The \.grad attribute of a Tensor that is not a leaf Tensor is being accessed",
     "megatron/core/optimizer/optimizer.py:66 (_zero_grad_group_helper): `hasattr(param, 'grad')` on "
     "each parameter it zeroes, every step"),
    (UserWarning, r"barrier\(\)\W+using the device under current context",
     "torch/distributed/distributed_c10d.py under NCCL: Megatron's barriers pass no device_id"),
    (DeprecationWarning, r"Warning\W+tp_group is None, using default tp group",
     "megatron/core/tensor_parallel/layers.py, transformer/mlp.py: Megatron's own deprecation, at build"),
    (DeprecationWarning, r"The following imports from `dynamic_context\.py` will be removed",
     "megatron/core/inference/contexts/__init__.py, on import"),
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated",
     "torch/jit/_script.py, on import of TorchScript code in Megatron"),
    (FutureWarning, r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated",
     "torch/distributed/c10d_logger.py: Megatron's DDP buffers and distributed optimizer call them"),
    (FutureWarning, r"`load_state_dict` is deprecated and will be removed in future versions",
     "megatron/core/dist_checkpointing/strategies/torch.py:799: torch.distributed.checkpoint's old name, on "
     "every checkpoint load"),
)


def install() -> None:
    """Hide the KNOWN_HARMLESS warnings in this process (idempotent); leave every other one visible."""
    for category, message, _ in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category)


def pytest_filters() -> list[str]:
    """The same list as pytest `filterwarnings` lines (setup.cfg keeps a copy; a test compares)."""
    return [f"ignore:{message}:{category.__name__}" for category, message, _ in KNOWN_HARMLESS]


def is_filtered(message: str, category: type[Warning]) -> bool:
    """Whether `install()` hides a warning with this message and category."""
    return any(issubclass(category, c) and re.match(m, message, re.IGNORECASE) for c, m, _ in KNOWN_HARMLESS)
