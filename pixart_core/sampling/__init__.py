"""Samplers for PixArt: DPM-Solver++(2M), SA-Solver, Euler, Euler ancestral, DDIM and LCM (PixArt-δ).

`sample(eps_fn, noise, sampler=..., steps=...)` is the one-call entry point (VP latents in and out);
`cfg_eps_fn(model, ...)` builds the guided epsilon function from a PixArt transformer. `SAMPLER_TABLE` (see
`table.py`) holds every sampler name with its function, default steps and image-to-image rule; `sampler_spec`
validates a name. The `sample_*` functions have k-diffusion's interface
`(model, x, sigmas, extra_args=None, callback=None, disable=None, ...)` over a denoiser (see `samplers.py`),
so ComfyUI's `KSAMPLER` can call them like its own.
"""

from .api import SamplingInterrupted, sample
from .denoiser import EpsDenoiser
from .guidance import ScheduledControl, cfg_eps_fn
from .lcm import LCMDenoiser, lcm_boundary_scalings, sample_lcm
from .sa_solver import pixart_tau, sample_sa_solver
from .samplers import (default_noise_sampler, noise_sampler_from, sample_ddim, sample_dpmpp_2m, sample_euler,
                       sample_euler_ancestral)
from .schedule import NoiseSchedule, SamplingPlan, linear_schedule
from .table import DEFAULT_SAMPLER, DEFAULT_STEPS, MAX_STEPS, SAMPLER_TABLE, SAMPLERS, SamplerSpec, plan_for, sampler_spec

__all__ = [
    "DEFAULT_SAMPLER", "DEFAULT_STEPS", "SAMPLER_TABLE", "SAMPLERS", "SamplerSpec", "sampler_spec",
    "SamplingInterrupted", "sample", "cfg_eps_fn", "ScheduledControl", "MAX_STEPS",
    "EpsDenoiser", "LCMDenoiser", "lcm_boundary_scalings", "pixart_tau", "default_noise_sampler", "noise_sampler_from",
    "sample_ddim", "sample_dpmpp_2m", "sample_euler", "sample_euler_ancestral", "sample_lcm", "sample_sa_solver",
    "NoiseSchedule", "SamplingPlan", "linear_schedule", "plan_for",
]
