"""Latent Consistency Model sampling for PixArt-δ (Luo et al. 2023, arXiv:2310.04378, Alg. 3; PixArt-δ,
Chen et al. 2024, arXiv:2401.05252).

The consistency function is f(x, t) = c_skip(t) * x_vp + c_out(t) * x0(x, t) with
c_skip = sigma_data^2 / ((s t)^2 + sigma_data^2), c_out = s t / sqrt((s t)^2 + sigma_data^2),
s = timestep_scaling = 10 and sigma_data = 0.5 (PixArt-δ training and diffusers' LCMScheduler defaults).
Sampling alternates f and re-noising to the next timestep; the last step returns f's output (`denoised`).
PixArt-LCM runs without classifier-free guidance (guidance_scale <= 1: the guidance is distilled in).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import trange

from .denoiser import EpsDenoiser
from .samplers import batch_ones, default_noise_sampler, report_step

TIMESTEP_SCALING = 10.0
SIGMA_DATA = 0.5


def lcm_boundary_scalings(timestep: float, timestep_scaling: float = TIMESTEP_SCALING,
                          sigma_data: float = SIGMA_DATA) -> tuple[float, float]:
    """(c_skip, c_out) of the LCM boundary condition at a DDPM timestep."""
    scaled = timestep * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / math.sqrt(scaled**2 + sigma_data**2)
    return c_skip, c_out


class LCMDenoiser:
    """The consistency function f(x, sigma) on top of an `EpsDenoiser`, in k-diffusion latents.

    c_skip multiplies the VP latent (the model's input), as diffusers' LCMScheduler does.
    """

    def __init__(self, denoiser: EpsDenoiser, timestep_scaling: float = TIMESTEP_SCALING,
                 sigma_data: float = SIGMA_DATA):
        self.denoiser = denoiser
        self.timestep_scaling = timestep_scaling
        self.sigma_data = sigma_data

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma).detach().cpu().double().reshape(-1).expand(x.shape[0])  # [B]
        x0 = self.denoiser(x, sigma)  # [B, C, H, W]
        x_vp = self.denoiser.vp_input(x, sigma)  # [B, C, H, W]
        scalings = [
            lcm_boundary_scalings(self.denoiser.timestep(value), self.timestep_scaling, self.sigma_data)
            for value in sigma.tolist()
        ]
        c_skip = torch.tensor([c[0] for c in scalings], dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)  # [B, 1, 1, 1]
        c_out = torch.tensor([c[1] for c in scalings], dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)  # [B, 1, 1, 1]
        return c_out * x0 + c_skip * x_vp  # [B, C, H, W]


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Multistep consistency sampling: x <- f(x, sigma_i), then x <- x + sigma_{i+1} * noise unless sigma_{i+1} = 0.

    `model` must already be the consistency function (wrap an EpsDenoiser in `LCMDenoiser`). In VP terms the
    re-noising is x_vp = sqrt(a_next) * denoised + sqrt(1 - a_next) * noise, as diffusers' LCMScheduler.step.
    """
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, extra_args.get("seed")) if noise_sampler is None else noise_sampler
    s_in = batch_ones(x)
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma * s_in, **extra_args)  # [B, C, H, W]
        report_step(callback, i, x, sigmas, denoised)
        x = denoised
        if sigma_next > 0:
            x = denoised + sigma_next * noise_sampler(sigmas[i], sigmas[i + 1])  # [B, C, H, W]
    return x
