"""Sharded state dicts of a model stage for Megatron `dist_checkpointing`.

Megatron's tensor-parallel linears describe their own sharding (global shape, axis, offset);
every other tensor of the model (convolutions, norms, embeddings, the adaLN tables) is replicated
across tensor- and data-parallel ranks and is written once. Keys are parameter names, which do not
depend on the layout, so a checkpoint saved at one (TP, PP, DP) loads at any other.
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group
from megatron.core.utils import make_sharded_tensor_for_checkpoint
from torch import nn

TP_LEAVES = (ColumnParallelLinear, RowParallelLinear)


def model_sharded_state_dict(model: nn.Module, prefix: str = "") -> dict[str, ShardedTensor]:
    """ShardedTensors of every parameter and persistent buffer, keyed by `prefix` + parameter name."""
    out: dict[str, ShardedTensor] = {}
    metadata = ensure_metadata_has_dp_cp_group(None)
    for name, module in model.named_modules():
        mod_prefix = f"{prefix}{name}." if name else prefix
        if isinstance(module, TP_LEAVES):
            for key, value in module.sharded_state_dict(prefix=mod_prefix, metadata=metadata).items():
                # Megatron's local linears carry an empty `_extra_state` object: nothing to save.
                if not (isinstance(value, ShardedObject) and value.data is None):
                    out[key] = value
            continue
        if any(isinstance(parent, TP_LEAVES) for parent in _ancestors(model, name)):
            continue
        tensors = dict(module.named_parameters(recurse=False))
        tensors.update((k, b) for k, b in module.named_buffers(recurse=False)
                       if k not in module._non_persistent_buffers_set)
        for key, tensor in tensors.items():
            out[mod_prefix + key] = make_sharded_tensor_for_checkpoint(tensor, mod_prefix + key)
    return out


def _ancestors(model: nn.Module, name: str):
    parts = name.split(".") if name else []
    module = model
    for part in parts[:-1]:
        module = getattr(module, part)
        yield module


def with_prefix(sharded: dict[str, ShardedTensor], prefix: str,
                tensors: dict[str, torch.Tensor] | None = None) -> dict[str, ShardedTensor]:
    """The same sharding under `prefix` + key, optionally for other tensors of the same shapes
    (the EMA weights are saved exactly like the weights they average)."""
    out = {}
    for key, sh in sharded.items():
        data = sh.data if tensors is None else tensors[key]
        out[prefix + key] = dataclasses.replace(sh, key=prefix + sh.key, data=data, dtype=data.dtype)
    return out


def plain_state_dict(loaded: dict) -> dict[str, torch.Tensor]:
    """Loaded ShardedTensor data (already local shards) as a plain state dict."""
    return {k: (v.data if isinstance(v, ShardedTensor) else v) for k, v in loaded.items()}
