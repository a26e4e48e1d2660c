"""The sampler table: every sampler name and everything the library, the nodes and the CLI need to know about it.

Adding a sampler is one row here plus its k-diffusion-style `sample_*` function. Names, defaults, the node's
and the CLI's choices, validation (`sampler_spec`) and the plan each sampler walks (`plan_for`) all read this
table. Every function in it evaluates the model once per step (`sample()` relies on that for its callback).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

import numpy as np

from .lcm import LCMDenoiser, sample_lcm
from .sa_solver import pixart_tau, sample_sa_solver
from .samplers import sample_ddim, sample_dpmpp_2m, sample_euler, sample_euler_ancestral
from .schedule import (NoiseSchedule, SamplingPlan, ddim_timesteps, dpm_timesteps, euler_timesteps, lcm_timesteps,
                       plan_from_timesteps, strength_start_index)

#: img2img keeps the `steps`-step schedule and skips its first steps (diffusers' img2img `get_timesteps`).
SKIP_FIRST_STEPS = "skip_first_steps"
#: img2img runs all `steps` steps on a grid cut at the `denoise` noise level (diffusers' LCM img2img pipeline).
SHORTER_GRID = "shorter_grid"


@dataclass(frozen=True)
class SamplerSpec:
    """One row of the sampler table.

    function: `sample_*(model, x, sigmas, extra_args, callback, disable, ...)`, k-diffusion's interface.
    default_steps: steps when the caller gives none.
    timesteps: the spacing, `timesteps(steps, num_train_timesteps=T[, strength=denoise]) -> [steps]` descending
        DDPM timesteps (`strength` only for `SHORTER_GRID`).
    img2img: how image-to-image picks its first step, `SKIP_FIRST_STEPS` or `SHORTER_GRID`.
    draws_noise: the function takes a `noise_sampler` (fed from `sample()`'s generator).
    fractional_timesteps: timesteps are fractional and sigmas interpolated between them (Euler "linspace").
    starts_from_sigma_max: txt2img starts from noise * sigma_max, not from x_vp = noise (diffusers' Euler
        schedulers' `init_noise_sigma`).
    ends_at_sigma_min: the last sigma is sigma at t = 0, not 0 (diffusers' SASolverScheduler).
    denoiser: wraps the `EpsDenoiser` before sampling (LCM: the consistency function), or None.
    distilled_guidance: the model carries its guidance (PixArt-δ LCM): callers default to no CFG.
    options: extra keyword arguments for `function` from the noise schedule, or None.
    """

    function: Callable[..., Any]
    default_steps: int
    timesteps: Callable[..., np.ndarray]
    img2img: Literal["skip_first_steps", "shorter_grid"]
    draws_noise: bool
    fractional_timesteps: bool = False
    starts_from_sigma_max: bool = False
    ends_at_sigma_min: bool = False
    denoiser: Callable[[Any], Any] | None = None
    distilled_guidance: bool = False
    options: Callable[[NoiseSchedule], dict[str, Any]] | None = None


def _sa_solver_options(schedule: NoiseSchedule) -> dict[str, Any]:
    return {"tau": pixart_tau(schedule)}


SAMPLER_TABLE: Mapping[str, SamplerSpec] = MappingProxyType({
    "dpmpp_2m": SamplerSpec(sample_dpmpp_2m, default_steps=20, timesteps=dpm_timesteps, img2img=SKIP_FIRST_STEPS,
                            draws_noise=False),
    "sa_solver": SamplerSpec(sample_sa_solver, default_steps=25, timesteps=dpm_timesteps, img2img=SKIP_FIRST_STEPS,
                             draws_noise=True, ends_at_sigma_min=True, options=_sa_solver_options),
    "euler": SamplerSpec(sample_euler, default_steps=20, timesteps=euler_timesteps, img2img=SKIP_FIRST_STEPS,
                         draws_noise=False, fractional_timesteps=True, starts_from_sigma_max=True),
    "euler_ancestral": SamplerSpec(sample_euler_ancestral, default_steps=20, timesteps=euler_timesteps,
                                   img2img=SKIP_FIRST_STEPS, draws_noise=True, fractional_timesteps=True,
                                   starts_from_sigma_max=True),
    "ddim": SamplerSpec(sample_ddim, default_steps=20, timesteps=ddim_timesteps, img2img=SKIP_FIRST_STEPS,
                        draws_noise=False),
    "lcm": SamplerSpec(sample_lcm, default_steps=4, timesteps=lcm_timesteps, img2img=SHORTER_GRID, draws_noise=True,
                       denoiser=LCMDenoiser, distilled_guidance=True),
})

#: The most steps every sampler's schedule holds: DPM-Solver++ and SA-Solver need steps + 1 distinct integer
#: timesteps of the 1000-step training schedule (`schedule.dpm_timesteps`); LCM has its own, lower limit.
MAX_STEPS = 999

#: The sampler of the official apps and diffusers' PixArt pipelines (20 steps, cfg 4.5).
DEFAULT_SAMPLER = "dpmpp_2m"
SAMPLERS = tuple(SAMPLER_TABLE)
DEFAULT_STEPS = MappingProxyType({name: spec.default_steps for name, spec in SAMPLER_TABLE.items()})


def sampler_spec(name: str, argument: str = "sampler") -> SamplerSpec:
    """The table row of sampler `name`; ValueError naming `argument` (e.g. "sampler_name") and the choices."""
    spec = SAMPLER_TABLE.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown {argument} {name!r}; choose one of {', '.join(SAMPLER_TABLE)}")
    return spec


def plan_for(schedule: NoiseSchedule, sampler: str, steps: int, denoise: float = 1.0) -> SamplingPlan:
    """Timesteps and sigmas of `sampler` for `steps` steps, truncated for img2img when `denoise` < 1.

    `SKIP_FIRST_STEPS` samplers build the full `steps`-step schedule and skip its first
    `steps - int(steps * denoise)` steps; `SHORTER_GRID` (LCM) runs all `steps` steps on a grid cut by `denoise`.
    """
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise!r}")
    spec = sampler_spec(sampler)
    final_sigma = float(schedule.sigmas[0]) if spec.ends_at_sigma_min else 0.0
    if spec.img2img == SHORTER_GRID:
        timesteps = spec.timesteps(steps, strength=denoise, num_train_timesteps=schedule.num_train_timesteps)
    else:
        timesteps = spec.timesteps(steps, num_train_timesteps=schedule.num_train_timesteps)
        start = strength_start_index(steps, denoise)
        if start >= steps:
            raise ValueError(
                f"denoise {denoise} with {steps} steps leaves no step to run (int(steps * denoise) = 0); "
                f"raise denoise or steps"
            )
        timesteps = timesteps[start:]
    return plan_from_timesteps(schedule, timesteps, final_sigma, interpolate=spec.fractional_timesteps)
