"""Sampling from a trained model stage: captions -> images, with classifier-free guidance.

Image i starts from noise seeded by (seed, i), so a sample set is the same however the captions
are split across ranks or batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from tqdm import tqdm

from harness.config import RunConfig
from harness.diffusion.samplers import guided, sample
from harness.diffusion.schedule import Schedule
from harness.model.conditioning import TextInput
from harness.model.uvit import UViT
from harness.parallel.forward import stage_forward
from harness.parallel.layout import Layout, device


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


@torch.no_grad()
def sample_captions(model: UViT, cfg: RunConfig, layout: Layout, text: TextInput, indices: Sequence[int], *,
                    seed: int = 0, steps: int | None = None, sampler: str | None = None,
                    guidance_scale: float | None = None) -> torch.Tensor:
    """Images (n, 3, R, R) in [-1, 1] for n captions; every rank of the model's pipeline calls it."""
    d, res = cfg.diffusion, cfg.model.resolution_px
    schedule = Schedule.of(res, d)
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


def sample_sharded(model: UViT, cfg: RunConfig, layout: Layout, captions: Callable[[list[int]], TextInput], n: int,
                   *, batch: int, seed: int = 0, steps: int | None = None, sampler: str | None = None,
                   guidance_scale: float | None = None) -> torch.Tensor:
    """All n images (n, 3, R, R) float32 on the CPU of every rank, sampled sharded over data-parallel
    ranks: this rank computes positions i = dp_rank (mod dp), `batch` at a time, with
    `captions(positions)` giving their TextInput; a DP all-reduce gathers them (collective)."""
    mine = shard_positions(n, layout)
    chunks = [mine[i:i + batch] for i in range(0, len(mine), batch)]
    out = [sample_captions(model, cfg, layout, captions(chunk), chunk, seed=seed, steps=steps, sampler=sampler,
                           guidance_scale=guidance_scale).float()
           for chunk in tqdm(chunks, desc="sampling", unit="batch", disable=layout.rank != 0)]
    res = cfg.model.resolution_px
    local = torch.cat(out) if out else torch.empty(0, 3, res, res)
    return gather_rows(local, mine, n, layout).cpu()
