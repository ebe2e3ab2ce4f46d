"""Fixes for two Megatron-core 0.16.1 bugs in `fully_reshardable` distributed-optimizer checkpoints,
applied once at import (harness/parallel/ddp.py imports this module). Both are upstream bugs; each
fix is a wrapper around the method that has it, and leaves everything else to Megatron."""

from __future__ import annotations

from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer


def _keep_adam_step_out_of_reshard_load() -> None:
    """Work around a Megatron-core 0.16.1 bug when the distributed optimizer wraps torch's AdamW.

    Loading `fully_reshardable` optimizer state copies every per-parameter state tensor from the
    checkpoint, but it skips torch's per-parameter "step" on the source side and not on the
    destination side (`_set_main_param_and_optimizer_states`): KeyError 'step'. With Apex or
    Transformer Engine optimizers there is no per-parameter step, so only CPU and Apex-less runs
    hit it. The step itself is restored from the param groups by `load_state_dict` before this.
    """
    original = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state[self.optimizer.param_groups[group_index]["params"][group_order]]
        step = state.pop("step", None) if "step" not in tensors else None
        try:
            original(self, model_param, tensors)
        finally:
            if step is not None:
                state["step"] = step

    DistributedOptimizer._set_main_param_and_optimizer_states = set_states



def _rebase_reshardable_offsets_past_bucket_padding() -> None:
    """Work around a Megatron-core 0.16.1 bug with more than one DDP bucket (fixed upstream in
    Megatron-LM PR 5077, after 0.16.1).

    `get_parameter_state_dp_zero` packs each bucket's state into one coalesced tensor with the
    bucket-end padding stripped, but `sharded_param_state_fully_reshardable` slices it at the raw
    `param_index_map` offsets, which still count that padding. Every parameter after the first
    bucket is saved (and loaded) under another parameter's values: silently wrong fp32 main weights
    and Adam moments whenever `parallel.bucket_size` splits the buffer. This rebases the offsets
    for the duration of the call, which fixes the save and the load alike.
    """
    original = DistributedOptimizer.sharded_param_state_fully_reshardable

    def sharded_state(self, *args, **kwargs):
        saved = [buffer.param_index_map for buffer in self.buffers]
        try:
            for buffer in self.buffers:
                buffer.param_index_map = _unpadded_index_map(buffer)
            return original(self, *args, **kwargs)
        finally:
            for buffer, index_map in zip(self.buffers, saved):
                buffer.param_index_map = index_map

    DistributedOptimizer.sharded_param_state_fully_reshardable = sharded_state


def _unpadded_index_map(buffer) -> dict:
    """`param_index_map` with each bucket's offset moved back by the end padding of the buckets
    before it: the positions in a buffer whose buckets are concatenated without padding."""
    stripped, unpadded_offset = {}, 0
    for bucket in buffer.buckets:
        stripped[bucket.bucket_id] = bucket.offset - unpadded_offset
        unpadded_offset += bucket.numel_unpadded
    return {param: (start - stripped[bucket_id], end - stripped[bucket_id], bucket_id)
            for param, (start, end, bucket_id) in buffer.param_index_map.items()}


_keep_adam_step_out_of_reshard_load()
_rebase_reshardable_offsets_past_bucket_padding()
