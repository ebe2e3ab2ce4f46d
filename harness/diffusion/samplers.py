"""Samplers for a v-prediction model in continuous time, and classifier-free guidance.

`denoise(z, t) -> v` is any callable; samplers walk t from 1 to 0 on a uniform grid.
- DDIM (Song et al. 2021, eq. 12 with eta = 0): deterministic, z_s = alpha_s x̂ + sigma_s ε̂.
- Ancestral / DDPM (Ho et al. 2020; in log-SNR form as in Kingma et al. 2021, VDM eq. 33):
  z_s ~ N(r·(alpha_s/alpha_t) z_t + (1-r)·alpha_s x̂, (1-r)·sigma_s^2), r = exp(logsnr_t - logsnr_s).
Noise for image i comes from its own generator, so a sample set is the same at any batch split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from harness.diffusion.objective import x0_eps_from_v
from harness.diffusion.schedule import Schedule, alpha_sigma

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_sample_randn(generators: Sequence[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """(len(generators), *shape) standard normal, row i from generators[i]."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def guided(denoise_cond: Denoiser, denoise_uncond: Denoiser, scale: float) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2022): v_u + scale (v_c - v_u); scale 1 = no guidance."""
    if scale == 1.0:
        return denoise_cond

    def denoise(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_u = denoise_uncond(z, t)
        return v_u + scale * (denoise_cond(z, t) - v_u)
    return denoise


@torch.no_grad()
def sample(denoise: Denoiser, schedule: Schedule, generators: Sequence[torch.Generator],
           shape: tuple[int, ...], *, steps: int, sampler: str = "ddim", clip_x0: bool = True,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """Run a sampler from pure noise; returns x̂0 of shape (len(generators), *shape) in [-1, 1] if clipped."""
    if sampler not in ("ddim", "ancestral"):
        raise ValueError(f"sampler must be ddim or ancestral, got {sampler!r}")
    z = per_sample_randn(generators, shape).to(device)
    n = z.shape[0]
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    for i in range(steps):
        t, s = times[i].item(), times[i + 1].item()
        logsnr_t = schedule.logsnr(torch.full((n,), t, dtype=torch.float64))
        logsnr_s = schedule.logsnr(torch.full((n,), s, dtype=torch.float64))
        v = denoise(z, torch.full((n,), t, dtype=torch.float32, device=device)).double()
        x0, eps = x0_eps_from_v(z.double(), v, logsnr_t.to(device))
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = _eps_from_x0(z.double(), x0, logsnr_t.to(device))
        if i == steps - 1:
            return x0.to(z.dtype)
        alpha_s, sigma_s = (a.to(device).reshape(-1, *[1] * (z.dim() - 1)) for a in alpha_sigma(logsnr_s))
        if sampler == "ddim":
            z = (alpha_s * x0 + sigma_s * eps).to(z.dtype)
        else:
            alpha_t, _ = alpha_sigma(logsnr_t)
            r = torch.exp(logsnr_t - logsnr_s).to(device).reshape(alpha_s.shape)
            mean = r * (alpha_s / alpha_t.to(device).reshape(alpha_s.shape)) * z.double() + (1 - r) * alpha_s * x0
            noise = per_sample_randn(generators, shape).to(device).double()
            z = (mean + ((1 - r) * sigma_s**2).sqrt() * noise).to(z.dtype)
    return z


def _eps_from_x0(z: torch.Tensor, x0: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    alpha, sigma = alpha_sigma(logsnr)
    shape = (-1, *[1] * (z.dim() - 1))
    return (z - alpha.reshape(shape) * x0) / sigma.reshape(shape)
