"""Convolutional building blocks of the UNet levels (plain torch; replicated across TP ranks).

Shapes: images and feature maps are (B, C, H, W); the conditioning vector is (B, D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that normalises a bf16 channels-last CPU tensor in channels-first layout.

    The levels keep their maps channels-last (harness/model/uvit.py), but ATen's bf16 channels-last
    GroupNorm backward on CPU is slow when a group holds few channels: at 32 channels in 32 groups,
    (8, 32, 128, 128), forward + backward took 92 ms against 19 ms through channels-first, and it was
    38% of the 128 px demo step (BENCHMARKS.md); in 8 groups of 4 channels, 21.7 against 12.3 ms on
    another CPU. fp32 and CUDA tensors take the module's own path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


GROUP_MIN_CHANNELS = 4


def group_norm(channels: int) -> GroupNorm:
    """GroupNorm with up to 32 groups that divide the channels, each of at least GROUP_MIN_CHANNELS
    channels where the channels allow (32 groups from 128 channels up, as in DDPM's UNets).

    One channel per group would normalise every channel of every image on its own (instance norm).
    That is what the 32-channel outer levels of a grown model had (and 2 channels at 64): grown from
    the same demo core, with groups of 4 channels the 128 px stages reached a lower held-out loss
    (0.110 against 0.142) and a better FID (376 against 423; RESULTS.md). The parameters do not
    depend on the grouping, so a checkpoint saved under the old one loads, and computes with this one.
    """
    groups = math.gcd(32, channels)
    while groups > 1 and channels // groups < GROUP_MIN_CHANNELS:
        groups //= 2
    return GroupNorm(groups, channels, eps=1e-6)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (the block starts as the identity) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, scale/shift from the conditioning vector, residual path.

    The second convolution starts at zero (`zero_init`), so a new block is the identity (plus a 1x1
    channel projection where the channel count changes) until it has trained.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, dropout: float = 0.0,
                 zero_init: bool = True):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.cond = nn.Linear(cond_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if zero_init:
            zero_(self.conv2)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.cond(F.silu(cond))[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution (may change channels)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour, then a 3x3 convolution (may change channels)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) values -> (B, dim) sin/cos features at geometric frequencies (Transformer / DDPM style)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    args = x.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin/cos position embedding (grid*grid, dim), rows in raster order (MAE / DiT)."""
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    emb_y = sinusoidal_embedding(yy.flatten(), dim // 2, max_period=10000.0)
    emb_x = sinusoidal_embedding(xx.flatten(), dim - dim // 2, max_period=10000.0)
    return torch.cat([emb_y, emb_x], dim=1)
