"""Diffusion math: closed forms of the schedule and v-parameterisation, samplers on exact toys."""

import math

import pytest
import torch

from harness.diffusion.objective import (
    diffuse,
    draw,
    v_loss,
    v_of,
    v_target,
    x0_eps_from_v,
)
from harness.diffusion.samplers import guided, sample
from harness.diffusion.schedule import (
    Schedule,
    alpha_sigma,
    logsnr_cosine,
    resolution_shift,
)


def test_cosine_schedule_closed_form():
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    logsnr = logsnr_cosine(t)
    assert logsnr[0].item() == pytest.approx(15.0) and logsnr[-1].item() == pytest.approx(-15.0)
    assert logsnr[2].item() == pytest.approx(0.0, abs=1e-9)          # tan(pi/4) = 1
    # away from the clipped ends the schedule is -2 log tan(pi t / 2): alpha = cos(pi t / 2)
    alpha, sigma = alpha_sigma(logsnr_cosine(torch.tensor([0.3], dtype=torch.float64), logsnr_min=-200.0, logsnr_max=200.0))
    assert alpha.item() == pytest.approx(math.cos(math.pi * 0.3 / 2), rel=1e-9)
    assert (alpha**2 + sigma**2).item() == pytest.approx(1.0)
    assert torch.all(logsnr[1:] < logsnr[:-1])


def test_resolution_shift():
    assert resolution_shift(64) == 0.0
    assert resolution_shift(128) == pytest.approx(-2 * math.log(2))
    assert resolution_shift(1024, 64) == pytest.approx(2 * math.log(64 / 1024))
    t = torch.tensor([0.5], dtype=torch.float64)
    assert (Schedule(256).logsnr(t) - Schedule(64).logsnr(t)).item() == pytest.approx(2 * math.log(64 / 256))


def test_interpolated_schedule_moves_from_base_shift_to_detail_shift():
    """simple diffusion's interpolated schedule: the base resolution's shift at t = 1, the detail
    base's at t = 0, linear in t between; without a detail base, exactly the shifted schedule."""
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    shifted, interpolated = Schedule(128), Schedule(128, detail_base_px=128)
    assert torch.equal(Schedule(128, detail_base_px=0).logsnr(t), shifted.logsnr(t))
    assert interpolated.logsnr(t[-1:]).item() == pytest.approx(shifted.logsnr(t[-1:]).item())
    assert interpolated.logsnr(t[:1]).item() == pytest.approx(Schedule(128, base_resolution_px=128).logsnr(t[:1]).item())
    gap = interpolated.logsnr(t) - shifted.logsnr(t)          # (1 - t) * 2 log 2: less noise towards t = 0
    assert torch.allclose(gap, (1 - t) * 2 * math.log(2))
    assert torch.all(interpolated.logsnr(t)[1:] < interpolated.logsnr(t)[:-1])


def test_v_parameterisation_inverts():
    x0, noise = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, 3, 8, 8, dtype=torch.float64)
    logsnr = torch.tensor([-5.0, 0.0, 2.0, 9.0], dtype=torch.float64)
    z, v = diffuse(x0, noise, logsnr), v_target(x0, noise, logsnr)
    x0_hat, eps_hat = x0_eps_from_v(z, v, logsnr)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)
    # Per-sample mean of squared differences, computed in fp32 whatever the input precision.
    pred = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    true = pred + torch.tensor([1.0, -2.0], dtype=torch.float64).view(2, 1, 1, 1)
    true[1, 0, 0, 0] += 3.0                                     # sample 1: one error of 1 instead of -2
    torch.testing.assert_close(v_loss(pred, true), torch.tensor([1.0, (11 * 4 + 1) / 12]))
    assert v_loss(pred.bfloat16(), true.bfloat16()).dtype == torch.float32


def test_an_x_prediction_maps_to_the_v_it_implies():
    """prediction x: the true image maps to the true v, and the sampler's x̂0 of the mapped v is the
    network's x̂ (exact without a floor); training's floor scales prediction and target alike, so
    below it the loss weight on x is capped at 1 / floor^2; prediction v is the output itself."""
    x0, noise = torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.randn(5, 3, 8, 8, dtype=torch.float64)
    logsnr = torch.tensor([-5.0, 0.0, 2.0, 9.0, 14.0], dtype=torch.float64)
    z = diffuse(x0, noise, logsnr)
    torch.testing.assert_close(v_of(x0, z, logsnr, "x").double(), v_target(x0, noise, logsnr), rtol=1e-5, atol=1e-5)
    x_hat = x0 + 0.1 * torch.randn_like(x0)
    torch.testing.assert_close(x0_eps_from_v(z, v_of(x_hat, z, logsnr, "x").double(), logsnr)[0], x_hat,
                               rtol=1e-4, atol=1e-4)
    _, sigma = alpha_sigma(logsnr)
    floor = 0.05
    loss = v_loss(v_of(x_hat, z, logsnr, "x", floor), v_of(x0, z, logsnr, "x", floor))
    weight = 1 / sigma.clamp_min(floor) ** 2
    torch.testing.assert_close(loss.double(), weight * (x_hat - x0).pow(2).flatten(1).mean(1), rtol=1e-4, atol=0)
    assert weight[-1] == pytest.approx(1 / floor**2) and sigma[-1] < floor
    assert v_of(x_hat, z, logsnr, "v") is x_hat


def test_draws_depend_only_on_seed_and_position():
    a = draw([5, 6, 7], (3, 4, 4), seed=1, drop_prob=0.5)
    b = draw([7], (3, 4, 4), seed=1, drop_prob=0.5)
    torch.testing.assert_close(a.noise[2], b.noise[0])
    assert a.t[2] == b.t[0] and a.drop[2] == b.drop[0]
    c = draw([7], (3, 4, 4), seed=2, drop_prob=0.5)
    assert not torch.equal(c.noise, b.noise)
    drops = draw(range(2000), (1,), seed=0, drop_prob=0.1).drop.float().mean().item()
    assert 0.08 < drops < 0.12


def _exact_gaussian_denoiser(schedule, data_std):
    """The exact v-predictor for data ~ N(0, data_std^2 I)."""
    def denoise(z, t):
        logsnr = schedule.logsnr(t.double())
        alpha, sigma = (a.reshape(-1, *[1] * (z.dim() - 1)) for a in alpha_sigma(logsnr))
        x0 = alpha * data_std**2 / (alpha**2 * data_std**2 + sigma**2) * z.double()
        eps = (z.double() - alpha * x0) / sigma
        return alpha * eps - sigma * x0
    return denoise


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_samplers_recover_a_point_mass(sampler):
    target = torch.tensor([0.3, -0.7])
    schedule = Schedule(64)

    def denoise(z, t):                         # exact v for data = a single point
        alpha, sigma = (a.reshape(-1, 1) for a in alpha_sigma(schedule.logsnr(t.double())))
        eps = (z.double() - alpha * target) / sigma
        return alpha * eps - sigma * target
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    out = sample(denoise, schedule, gens, (2,), steps=10, sampler=sampler, clip_x0=False)
    torch.testing.assert_close(out, target.expand(4, 2).to(out.dtype), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler, steps", [("ddim", 50), ("ancestral", 250)])
def test_samplers_match_gaussian_data_variance(sampler, steps):
    """With the exact denoiser, samples of N(0, 0.5^2) data have its spread (ancestral sampling
    replaces x by its posterior mean in each step, so it needs smaller steps to get there)."""
    schedule, std = Schedule(64), 0.5
    gens = [torch.Generator().manual_seed(i) for i in range(1200)]
    out = sample(_exact_gaussian_denoiser(schedule, std), schedule, gens, (1,), steps=steps, sampler=sampler, clip_x0=False)
    assert out.std().item() == pytest.approx(std, rel=0.05)
    assert abs(out.mean().item()) < 0.03


def test_sample_is_independent_of_batch_split():
    schedule = Schedule(64)
    denoise = _exact_gaussian_denoiser(schedule, 0.5)
    full = sample(denoise, schedule, [torch.Generator().manual_seed(i) for i in range(6)], (2,), steps=5, sampler="ancestral")
    part = sample(denoise, schedule, [torch.Generator().manual_seed(i) for i in range(3, 6)], (2,), steps=5, sampler="ancestral")
    torch.testing.assert_close(full[3:], part)


def test_guidance_combines_linearly():
    cond, uncond = (lambda z, t: z + 1.0), (lambda z, t: z)
    z = torch.zeros(2, 3)
    torch.testing.assert_close(guided(cond, uncond, 3.0)(z, None), torch.full((2, 3), 3.0))
    assert guided(cond, uncond, 1.0) is cond


def test_sample_generator_takes_numpy_and_tensor_indices():
    import numpy as np

    from harness.diffusion.objective import sample_generator
    draws = [torch.randn(3, generator=sample_generator(7, i)) for i in (5, np.int64(5), torch.tensor(5))]
    assert all(torch.equal(draws[0], d) for d in draws[1:])
