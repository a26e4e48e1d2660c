"""Samplers for PixArt: DPM-Solver++(2M), SA-Solver, Euler, Euler ancestral, DDIM and LCM (PixArt-δ).

`sample(eps_fn, noise, sampler=..., steps=...)` is the one-call entry point (VP latents in and out);
`cfg_eps_fn(model, ...)` builds the guided epsilon function from a PixArt transformer. The `sample_*`
functions are k-diffusion-style samplers `(model, x, sigmas, extra_args, callback, disable, ...)` over a
denoiser, usable on their own (e.g. wrapped by ComfyUI's KSAMPLER).
"""

from .api import DEFAULT_STEPS, SAMPLERS, SamplingInterrupted, sample
from .denoiser import EpsDenoiser
from .guidance import cfg_eps_fn
from .lcm import LCMDenoiser, lcm_boundary_scalings, sample_lcm
from .sa_solver import pixart_tau, sample_sa_solver
from .samplers import noise_sampler_from, sample_ddim, sample_dpmpp_2m, sample_euler, sample_euler_ancestral
from .schedule import NoiseSchedule, SamplingPlan, linear_schedule, plan_for

__all__ = [
    "DEFAULT_STEPS", "SAMPLERS", "SamplingInterrupted", "sample", "cfg_eps_fn",
    "EpsDenoiser", "LCMDenoiser", "lcm_boundary_scalings", "pixart_tau", "noise_sampler_from",
    "sample_ddim", "sample_dpmpp_2m", "sample_euler", "sample_euler_ancestral", "sample_lcm", "sample_sa_solver",
    "NoiseSchedule", "SamplingPlan", "linear_schedule", "plan_for",
]
