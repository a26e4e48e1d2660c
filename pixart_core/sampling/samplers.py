"""Deterministic and ancestral ODE samplers with k-diffusion's interface (k-diffusion `k_diffusion/sampling.py`).

Every `sample_*` function here and in `lcm.py` / `sa_solver.py` is called as
`sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, ...)`:

- `model(x, sigma [B], **extra_args) -> x0` is a denoiser (see `denoiser.EpsDenoiser`); `extra_args` is
  forwarded to it untouched.
- `x` is the k-diffusion latent (x0 + sigma * eps); `sigmas` the descending noise levels to walk (last usually 0).
- `callback`, when given, receives `{"i", "x", "sigma", "sigma_hat", "denoised"}` once per step, after the model
  call and BEFORE the update, with `x` the step's input (as k-diffusion and ComfyUI call it).
- `disable` is passed to a `tqdm.auto.trange` progress bar (None: shown on a terminal only).
- Stochastic samplers draw fresh noise from `noise_sampler(sigma, sigma_next)`; without one they use
  `default_noise_sampler(x, extra_args.get("seed"))` (ComfyUI puts the seed in `extra_args`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from tqdm.auto import trange

NoiseSampler = Callable[[Any, Any], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def noise_sampler_from(x: torch.Tensor, generator: torch.Generator | None) -> NoiseSampler:
    """`noise_sampler(sigma, sigma_next)`: standard-normal noise shaped like x, drawn from `generator` on its own
    device (as diffusers' randn_tensor); None uses torch's global RNG. The sigmas are accepted and ignored."""

    def draw(sigma=None, sigma_next=None) -> torch.Tensor:
        device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)  # [B, C, H, W]
        return noise.to(x.device)

    return draw


def default_noise_sampler(x: torch.Tensor, seed: int | None = None) -> NoiseSampler:
    """The noise sampler used when none is given: seeded on x's device when `seed` is set, else the global RNG."""
    generator = None if seed is None else torch.Generator(device=x.device).manual_seed(int(seed))
    return noise_sampler_from(x, generator)


def batch_ones(x: torch.Tensor) -> torch.Tensor:
    """Ones [B] in x's dtype and device; `sigma * batch_ones(x)` is the per-sample sigma a denoiser takes."""
    return x.new_ones([x.shape[0]])  # [B]


def report_step(callback: Callback | None, i: int, x: torch.Tensor, sigmas: torch.Tensor,
                denoised: torch.Tensor) -> None:
    """Call `callback` (if any) with k-diffusion's step dict; x is step i's input (call before the update)."""
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler steps on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022,
    arXiv:2206.00364, Alg. 2 without churn); equals diffusers' EulerDiscreteScheduler with s_churn = 0."""
    extra_args = {} if extra_args is None else extra_args
    s_in = batch_ones(x)
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma * s_in, **extra_args)  # [B, C, H, W]
        report_step(callback, i, x, sigmas, denoised)
        derivative = (x - denoised) / sigma  # [B, C, H, W]
        x = x + derivative * (sigma_next - sigma)  # [B, C, H, W]
    return x


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Deterministic DDIM (Song et al. 2021, arXiv:2010.02502, eta = 0): x_next = x0 + sigma_next * eps in
    k-diffusion space, i.e. one Euler step of the probability-flow ODE per scheduled pair of sigmas."""
    extra_args = {} if extra_args is None else extra_args
    s_in = batch_ones(x)
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma * s_in, **extra_args)  # [B, C, H, W]
        report_step(callback, i, x, sigmas, denoised)
        eps = (x - denoised) / sigma  # [B, C, H, W]
        x = denoised + sigma_next * eps  # [B, C, H, W]
    return x


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) splitting a step into a deterministic part and fresh noise (k-diffusion)."""
    if sigma_next == 0.0 or eta == 0.0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """Ancestral Euler: Euler step to sigma_down, then add sigma_up * noise (diffusers EulerAncestralDiscrete)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, extra_args.get("seed")) if noise_sampler is None else noise_sampler
    s_in = batch_ones(x)
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma * s_in, **extra_args)  # [B, C, H, W]
        report_step(callback, i, x, sigmas, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        derivative = (x - denoised) / sigma  # [B, C, H, W]
        x = x + derivative * (sigma_down - sigma)  # [B, C, H, W]
        if sigma_next > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * (s_noise * sigma_up)  # [B, C, H, W]
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Alg. 2) in log-SNR time lambda = -log sigma.

    First step and the step to sigma = 0 are first order (diffusers' `lower_order_final` with final sigma 0);
    the others use the midpoint correction D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, r = h_{i-1} / h_i.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = batch_ones(x)
    previous_denoised = None
    previous_h = None
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma * s_in, **extra_args)  # [B, C, H, W]
        report_step(callback, i, x, sigmas, denoised)
        if sigma_next == 0.0:
            x = denoised  # [B, C, H, W] limit of the first-order step as sigma_next -> 0
            h = None
        else:
            h = math.log(sigma) - math.log(sigma_next)
            if previous_denoised is None:
                direction = denoised  # [B, C, H, W]
            else:
                half_over_r = 0.5 * h / previous_h
                direction = (1.0 + half_over_r) * denoised - half_over_r * previous_denoised  # [B, C, H, W]
            x = (sigma_next / sigma) * x - math.expm1(-h) * direction  # [B, C, H, W]
        previous_denoised, previous_h = denoised, h
    return x
