"""Continuous-time cosine noise schedule in log-SNR, shifted by resolution (simple diffusion).

t in [0, 1]; alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr), alpha^2 + sigma^2 = 1.
Hoogeboom et al. 2023, "simple diffusion", §3.1: the cosine schedule with clipped ends; its log-SNR
shifted by 2 log(base / resolution) so a larger image is noisier at equal t; and the interpolated
schedule, whose shift moves linearly in t from the base resolution's (t = 1) to a second, higher
base's (t = 0), so the low-noise steps that make the finest detail are less noisy.
"""

from __future__ import annotations

import math

import torch

from harness.config import DiffusionConfig


def resolution_shift(resolution_px: int, base_resolution_px: int = 64) -> float:
    """log-SNR shift 2·log(base/resolution): 0 at the base resolution, negative above it."""
    return 2.0 * math.log(base_resolution_px / resolution_px)


def logsnr_cosine(t: torch.Tensor, *, shift: float = 0.0, logsnr_min: float = -15.0,
                  logsnr_max: float = 15.0) -> torch.Tensor:
    """log-SNR at t: -2 log tan(pi t / 2), with t rescaled so t=0 -> logsnr_max, t=1 -> logsnr_min."""
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    return -2.0 * torch.log(torch.tan(t_min + t.double() * (t_max - t_min))).to(t.dtype) + shift


def alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of a log-SNR: alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr)."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


class Schedule:
    """The schedule of one training resolution: t -> log-SNR (the only state is its constants).

    With `detail_base_px` (> base_resolution_px) the shift is interpolated: shift(t) = t·shift(base)
    + (1 - t)·shift(detail_base), simple diffusion's `logsnr_schedule_cosine_shifted_interpolated`."""

    def __init__(self, resolution_px: int, base_resolution_px: int = 64, logsnr_min: float = -15.0,
                 logsnr_max: float = 15.0, detail_base_px: int = 0):
        self.shift = resolution_shift(resolution_px, base_resolution_px)
        self.detail_shift = resolution_shift(resolution_px, detail_base_px) if detail_base_px else self.shift
        self.logsnr_min, self.logsnr_max = logsnr_min, logsnr_max

    @classmethod
    def of(cls, resolution_px: int, d: DiffusionConfig) -> Schedule:
        """The schedule a run config's `diffusion` section (`d`) gives a model at `resolution_px`."""
        return cls(resolution_px, d.base_resolution_px, d.logsnr_min, d.logsnr_max, d.detail_base_px)

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """log-SNR at times t (any shape)."""
        if self.detail_shift == self.shift:
            return logsnr_cosine(t, shift=self.shift, logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max)
        unshifted = logsnr_cosine(t, logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max)
        return unshifted + t * self.shift + (1 - t) * self.detail_shift
