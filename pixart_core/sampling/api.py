"""The one-call sampling entry point: VP latents in, VP latents out, any sampler, txt2img or img2img.

Internally the samplers walk k-diffusion latents x = x_vp * sqrt(1 + sigma^2) (= x0 + sigma * eps); this
module converts at both ends, builds the schedule, draws nothing itself except through `generator`, and
turns `callback` / `should_stop` into the samplers' step callback.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .denoiser import EpsDenoiser, EpsFn
from .lcm import LCMDenoiser, sample_lcm
from .samplers import noise_sampler_from, sample_ddim, sample_dpmpp_2m, sample_euler, sample_euler_ancestral
from .sa_solver import pixart_tau, sample_sa_solver
from .schedule import linear_schedule, plan_for

SAMPLERS = ("dpmpp_2m", "sa_solver", "euler", "euler_ancestral", "ddim", "lcm")
DEFAULT_STEPS = {"dpmpp_2m": 20, "sa_solver": 25, "euler": 20, "euler_ancestral": 20, "ddim": 20, "lcm": 4}

# diffusers' Euler schedulers with "linspace" spacing start txt2img from noise * sigma_max (init_noise_sigma);
# the VP schedulers (DPM, DDIM, LCM, SA) start from x_vp = noise, i.e. noise * sqrt(1 + sigma_max^2) here.
_STARTS_FROM_SIGMA_MAX = ("euler", "euler_ancestral")

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


class SamplingInterrupted(RuntimeError):
    """Raised between steps when `should_stop()` returned True."""


def _check_latents(name: str, value: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor) or value.ndim != 4 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a floating-point latent tensor [B, C, H, W], got {shape}")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def sample(eps_fn: EpsFn, noise: torch.Tensor, *, sampler: str = "dpmpp_2m", steps: int = 20, denoise: float = 1.0,
           init_latent: torch.Tensor | None = None, generator: torch.Generator | None = None,
           callback: StepCallback | None = None, should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Run `sampler` for `steps` steps and return the clean latent [B, C, H, W] in the model's (VP) space.

    eps_fn(x [B,C,H,W], t [B] float DDPM timestep 0..999) -> eps [B,C,H,W]: the guided epsilon (`cfg_eps_fn`).
    noise: standard-normal [B, C, H, W]; for txt2img it is x_T (diffusers' initial latents for this sampler).
    init_latent: for img2img, the VAE latent already multiplied by the VAE scale factor; the first
        `steps - int(steps * denoise)` steps are skipped and sampling starts from
        sqrt(a_t) * init_latent + sqrt(1 - a_t) * noise at the first remaining timestep (LCM: see `plan_for`).
    generator: feeds the fresh noise of euler_ancestral, sa_solver and lcm (unused by the others); None uses
        torch's global RNG.
    callback(step_index, total_steps, x, denoised): after every step, x the VP latent after the step and
        denoised the current x0 prediction. should_stop(): polled before each step; True raises
        `SamplingInterrupted`. Computation runs in float32 for half-precision noise; returns that dtype.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    _check_latents("noise", noise)
    if init_latent is None and denoise != 1.0:
        raise ValueError(f"denoise {denoise} < 1 needs an init_latent (img2img); txt2img always uses denoise 1.0")
    if init_latent is not None:
        _check_latents("init_latent", init_latent)
        if init_latent.shape != noise.shape:
            raise ValueError(f"init_latent shape {tuple(init_latent.shape)} differs from noise {tuple(noise.shape)}")
    schedule = linear_schedule()
    plan = plan_for(schedule, sampler, steps, denoise)
    sigmas = plan.sigmas
    dtype = _work_dtype(noise.dtype)
    noise = noise.to(dtype)
    sigma_start = float(sigmas[0])
    if init_latent is not None:
        x = init_latent.to(device=noise.device, dtype=dtype) + sigma_start * noise  # [B, C, H, W]
    elif sampler in _STARTS_FROM_SIGMA_MAX:
        x = sigma_start * noise  # [B, C, H, W]
    else:
        x = math.sqrt(1.0 + sigma_start**2) * noise  # [B, C, H, W]

    total = plan.num_steps

    def stop_if_asked(done: int) -> None:
        if should_stop is not None and should_stop():
            raise SamplingInterrupted(f"sampling stopped by request after {done} of {total} steps")

    def on_step(info: dict) -> None:
        step = info["i"]
        if callback is not None:
            sigma_next = float(info["sigma_next"])
            x_vp = info["x"] / math.sqrt(1.0 + sigma_next**2)  # [B, C, H, W]
            callback(step, total, x_vp, info["denoised"])
        if step + 1 < total:
            stop_if_asked(step + 1)

    denoiser = EpsDenoiser(eps_fn, schedule, plan)
    noise_sampler = noise_sampler_from(x, generator)
    stop_if_asked(0)
    if sampler == "dpmpp_2m":
        x = sample_dpmpp_2m(denoiser, x, sigmas, callback=on_step)
    elif sampler == "ddim":
        x = sample_ddim(denoiser, x, sigmas, callback=on_step)
    elif sampler == "euler":
        x = sample_euler(denoiser, x, sigmas, callback=on_step)
    elif sampler == "euler_ancestral":
        x = sample_euler_ancestral(denoiser, x, sigmas, callback=on_step, noise_sampler=noise_sampler)
    elif sampler == "sa_solver":
        x = sample_sa_solver(denoiser, x, sigmas, callback=on_step, tau=pixart_tau(schedule),
                             noise_sampler=noise_sampler)
    else:
        x = sample_lcm(LCMDenoiser(denoiser), x, sigmas, callback=on_step, noise_sampler=noise_sampler)
    return x / math.sqrt(1.0 + float(sigmas[-1]) ** 2)  # [B, C, H, W] back to VP space
