"""Continuous-time cosine noise schedule in log-SNR, shifted by resolution (simple diffusion).

t in [0, 1]; alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr), alpha^2 + sigma^2 = 1.
Hoogeboom et al. 2023, "simple diffusion", §3.1 (interpolated cosine with clipped ends) and
§3.2 (shift the log-SNR by 2 log(base / resolution) so a larger image is noisier at equal t).
"""

from __future__ import annotations

import math

import torch


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
    """The schedule of one training resolution: t -> log-SNR (the only state is its constants)."""

    def __init__(self, resolution_px: int, base_resolution_px: int = 64, logsnr_min: float = -15.0,
                 logsnr_max: float = 15.0):
        self.shift = resolution_shift(resolution_px, base_resolution_px)
        self.logsnr_min, self.logsnr_max = logsnr_min, logsnr_max

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """log-SNR at times t (any shape)."""
        return logsnr_cosine(t, shift=self.shift, logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max)
