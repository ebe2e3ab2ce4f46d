"""v-prediction objective (Salimans & Ho 2022): the forward process, the target, the loss.

z_t = alpha x + sigma eps;  v = alpha eps - sigma x;  x = alpha z - sigma v;  eps = sigma z + alpha v.
The loss is on v whatever the network predicts. A network may predict x instead (`diffusion.prediction`,
Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise"): its v is (alpha z - x̂) / sigma,
so a pixel-space network need not reproduce the noise pixel by pixel to remove it.
Per-sample randomness (t, noise, caption drop) is a pure function of (seed, stream position), so a
run draws the same noise for the same sample whatever its data-parallel size, and a resumed run
needs no generator state beyond the number of samples consumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.diffusion.schedule import alpha_sigma


def _bcast(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def diffuse(x0: torch.Tensor, noise: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    """z_t = alpha x0 + sigma noise, with per-sample (B,) log-SNR."""
    alpha, sigma = alpha_sigma(logsnr)
    return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    """v = alpha noise - sigma x0."""
    alpha, sigma = alpha_sigma(logsnr)
    return _bcast(alpha, x0) * noise - _bcast(sigma, x0) * x0


def v_of(out: torch.Tensor, z: torch.Tensor, logsnr: torch.Tensor, prediction: str,
         sigma_floor: float = 0.0) -> torch.Tensor:
    """The v a network output implies at z_t: the output itself (`prediction` v) or, for an x
    prediction, (alpha z - x̂) / max(sigma, sigma_floor) (exact with no floor), in fp32 or better."""
    if prediction == "v":
        return out
    x_hat = out.to(torch.promote_types(out.dtype, torch.float32))      # bf16 outputs divided in fp32
    alpha, sigma = alpha_sigma(logsnr)
    return (_bcast(alpha, x_hat) * z.to(x_hat.dtype) - x_hat) / _bcast(sigma.clamp_min(sigma_floor), x_hat)


def x0_eps_from_v(z: torch.Tensor, v: torch.Tensor, logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a v prediction at z_t."""
    alpha, sigma = alpha_sigma(logsnr)
    alpha, sigma = _bcast(alpha, z), _bcast(sigma, z)
    return alpha * z - sigma * v, sigma * z + alpha * v


def v_loss(v_pred: torch.Tensor, v_true: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error on v, in fp32: (B,)."""
    return (v_pred.float() - v_true.float()).pow(2).flatten(1).mean(1)


@dataclass
class Draws:
    """Training randomness for a batch: times, noise and which captions are dropped."""

    t: torch.Tensor       # (B,) float32 in [0, 1)
    noise: torch.Tensor   # (B, *shape) float32
    drop: torch.Tensor    # (B,) bool


def sample_generator(seed: int, position: int) -> torch.Generator:
    """A CPU generator for one sample, seeded by (run seed, stream position).

    Python ints on purpose: a numpy or tensor index would overflow int64 in the mixing product."""
    mixed = int(seed) * 0x9E3779B97F4A7C15 + int(position) * 0xBF58476D1CE4E5B9
    return torch.Generator().manual_seed(mixed % (2**63))


def draw(positions: Sequence[int], shape: tuple[int, ...], seed: int, drop_prob: float) -> Draws:
    """Draw t ~ U[0,1), noise ~ N(0, I) and caption drops for the samples at these stream positions."""
    ts, noises, drops = [], [], []
    for position in positions:
        g = sample_generator(seed, position)
        ts.append(torch.rand((), generator=g))
        drops.append(torch.rand((), generator=g) < drop_prob)
        noises.append(torch.randn(shape, generator=g))
    return Draws(torch.stack(ts), torch.stack(noises), torch.stack(drops))
