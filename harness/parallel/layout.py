"""The parallel layout: Megatron's TP/PP/DP process groups and this rank's place in them.

A frozen `Layout` is built once after launch and passed explicitly below the train loop; nothing
under harness/ looks process groups up by itself except through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from harness.distributed import cpu_compat


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    rank: int
    world: int
    pp_prev_rank: int = 0      # global ranks of this rank's pipeline neighbours and of its last stage
    pp_next_rank: int = 0
    pp_last_rank: int = 0
    tp_group: object = field(default=None, compare=False, repr=False)
    pp_group: object = field(default=None, compare=False, repr=False)
    dp_group: object = field(default=None, compare=False, repr=False)

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    def describe(self) -> dict:
        """Sizes and ranks as plain values (for meta.json and logs)."""
        return {k: getattr(self, k) for k in ("tp", "pp", "dp", "tp_rank", "pp_rank", "dp_rank", "rank", "world")}


def initialize_layout(tp: int, pp: int, seed: int = 0, timeout_s: float = 600.0) -> Layout:
    """Create Megatron's process groups for (tp, pp) over the initialised world; return the Layout."""
    cpu_compat.apply()
    world = dist.get_world_size()
    if world % (tp * pp):
        raise ValueError(f"parallel.tp * parallel.pp = {tp * pp} does not divide the world size {world}")
    if parallel_state.model_parallel_is_initialized():
        _destroy_groups()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                             distributed_timeout_minutes=timeout_s / 60)
    model_parallel_cuda_manual_seed(seed)
    return Layout(
        tp=tp, pp=pp, dp=parallel_state.get_data_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(), rank=dist.get_rank(), world=world,
        pp_prev_rank=parallel_state.get_pipeline_model_parallel_prev_rank(),
        pp_next_rank=parallel_state.get_pipeline_model_parallel_next_rank(),
        pp_last_rank=parallel_state.get_pipeline_model_parallel_last_rank(),
        tp_group=parallel_state.get_tensor_model_parallel_group(),
        pp_group=parallel_state.get_pipeline_model_parallel_group(),
        dp_group=parallel_state.get_data_parallel_group())


def _destroy_groups() -> None:
    """Destroy the previous layout's process groups, all but the default one.

    Megatron's destroy_model_parallel only forgets most of its groups, and every gloo group keeps a
    thread that wakes about 100 times a second to poll its sockets. One layout makes ~20 groups, so
    a process that lays out run after run (experiments, tools, tests) slowed down with each: 360
    leaked threads cost 0.35 s user + 1.4 s sys per idle 5 s here, and 2,600 of them made the last
    tests of the suite 10-50x slower. torch keeps no public list of groups; its registry is read here.
    """
    parallel_state.destroy_model_parallel()     # destroys its gloo data-parallel groups itself
    registry = dist.distributed_c10d._world.pg_map
    for group in [g for g in registry if g is not dist.group.WORLD]:
        dist.destroy_process_group(group)


def device() -> torch.device:
    """The device this rank computes on."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def max_over_ranks(value: float) -> float:
    """The largest `value` over all ranks (collective; itself without a process group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    reduced = torch.tensor([value], dtype=torch.float64, device=device())
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return float(reduced.item())


def native_bf16() -> bool:
    """Whether this rank's device computes bf16 natively: a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 or AMX. Elsewhere oneDNN emulates bf16; on an AVX2-only EPYC a bf16 matmul ran at
    0.0013 TFLOP/s against 0.09 in fp32, and a bf16 convolution 80x slower than fp32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def precision(cfg) -> str:
    """`fp32` or `bf16`: train.precision, with `auto` resolved for this device (bf16 where native)."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    return "bf16" if native_bf16() else "fp32"
