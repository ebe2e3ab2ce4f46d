"""Sampling from a trained model stage: captions -> images, with classifier-free guidance.

Image i starts from noise seeded by (seed, i), so a sample set is the same however the captions
are split across ranks or batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from harness.config import RunConfig
from harness.diffusion.samplers import guided, sample
from harness.diffusion.schedule import Schedule
from harness.model.conditioning import TextInput
from harness.model.uvit import UViT
from harness.parallel.layout import Layout, device
from harness.parallel.pipeline import pack, pack_spec, unpack


def shard_positions(n: int, layout: Layout) -> list[int]:
    """Positions 0..n-1 of this data-parallel rank: p = dp_rank (mod dp)."""
    return list(range(layout.dp_rank, n, layout.dp))


def gather_rows(local: torch.Tensor, positions: Sequence[int], n: int, layout: Layout) -> torch.Tensor:
    """(n, ...) on every rank from each data-parallel rank's rows at `positions` (collective over DP).

    A sum of zero-filled tensors: exact, and deterministic whatever the reduction order. The result
    is on this rank's compute device (NCCL reduces only GPU tensors)."""
    full = torch.zeros((n, *local.shape[1:]), dtype=local.dtype, device=device())
    full[list(positions)] = local.to(full.device)
    if layout.dp > 1:
        dist.all_reduce(full, group=layout.dp_group)
    return full


def image_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image index."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in indices]


def stage_forward(model: UViT, cfg: RunConfig, layout: Layout):
    """(z, t, text) -> v on every rank of a pipeline: each stage runs its part, activations go forward
    with point-to-point sends, and the last stage broadcasts v back to all stages."""
    if layout.pp == 1:
        return model
    spec = pack_spec(model, cfg)

    def forward(z: torch.Tensor, t: torch.Tensor, text: TextInput) -> torch.Tensor:
        if layout.is_first_stage:
            state = model.embed(z, t, text)
        else:
            packed = torch.empty(spec.rows(), z.shape[0], spec.hidden, dtype=model.config.params_dtype, device=z.device)
            dist.recv(packed, src=parallel_state.get_pipeline_model_parallel_prev_rank())
            state = unpack(packed, spec)
        state = model.run_layers(state)
        if layout.is_last_stage:
            v = model.finish(state).float()
        else:
            dist.send(pack(state, spec), dst=parallel_state.get_pipeline_model_parallel_next_rank())
            v = torch.empty(z.shape, dtype=torch.float32, device=z.device)
        dist.broadcast(v, src=parallel_state.get_pipeline_model_parallel_last_rank(), group=layout.pp_group)
        return v
    return forward


@torch.no_grad()
def sample_captions(model: UViT, cfg: RunConfig, layout: Layout, text: TextInput, indices: Sequence[int], *,
                    seed: int = 0, steps: int | None = None, sampler: str | None = None,
                    guidance_scale: float | None = None) -> torch.Tensor:
    """Images (n, 3, R, R) in [-1, 1] for n captions; every rank of the model's pipeline calls it."""
    d, res = cfg.diffusion, cfg.model.resolution_px
    schedule = Schedule(res, d.base_resolution_px, d.logsnr_min, d.logsnr_max)
    n = len(indices)
    device = next(model.parameters()).device
    forward = stage_forward(model, cfg, layout)
    text_c = dataclasses.replace(text, drop=torch.zeros(n, dtype=torch.bool, device=device))
    text_u = dataclasses.replace(text, drop=torch.ones(n, dtype=torch.bool, device=device))
    was_training = model.training
    model.eval()
    try:
        denoise = guided(lambda z, t: forward(z, t, text_c).float(), lambda z, t: forward(z, t, text_u).float(),
                         d.guidance_scale if guidance_scale is None else guidance_scale)
        return sample(denoise, schedule, image_generators(seed, indices), (3, res, res),
                      steps=steps or d.sample_steps, sampler=sampler or d.sampler, device=device)
    finally:
        model.train(was_training)
