"""PixArt's DDPM noise schedule and the timestep / sigma sequences each sampler walks.

PixArt-α/Σ train with 1000 DDPM steps and linear betas 1e-4 .. 0.02 (Ho et al. 2020, arXiv:2006.11239,
`np.linspace` as the IDDPM "linear" schedule). Samplers here work in the k-diffusion parameterisation
(Karras et al. 2022, arXiv:2206.00364):
x = x_vp / sqrt(alpha_bar), sigma = sqrt((1 - alpha_bar) / alpha_bar), so x = x0 + sigma * eps.

Timestep spacings follow diffusers' schedulers configured as PixArt's released `scheduler_config.json`
(timestep_spacing "linspace", steps_offset 0), except DDIM, which uses "trailing" (see `ddim_timesteps`).
Which sampler uses which spacing is a column of the sampler table (`table.py`, `plan_for`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete VP schedule: alpha_bar[t] for t = 0 .. T-1 (float64)."""

    alphas_cumprod: np.ndarray  # [T]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def sigmas(self) -> np.ndarray:
        """k-diffusion sigma of every training timestep, sqrt((1 - a) / a)."""
        return np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)  # [T]

    def sigma_at(self, timesteps) -> np.ndarray:
        """Sigma at (possibly fractional) timesteps, linear in sigma between integers (diffusers' np.interp)."""
        grid = np.arange(self.num_train_timesteps, dtype=np.float64)
        return np.interp(np.asarray(timesteps, dtype=np.float64), grid, self.sigmas)

    def alpha_bar_at(self, timesteps) -> np.ndarray:
        """alpha_bar at (possibly fractional) timesteps, consistent with `sigma_at`: 1 / (1 + sigma^2)."""
        return 1.0 / (1.0 + self.sigma_at(timesteps) ** 2)

    def sigma_to_t(self, sigma) -> np.ndarray:
        """Fractional timestep of a sigma by linear interpolation in log sigma (as k-diffusion / diffusers)."""
        log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
        grid = np.arange(self.num_train_timesteps, dtype=np.float64)
        return np.interp(log_sigma, np.log(self.sigmas), grid)


@lru_cache(maxsize=8)
def linear_schedule(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """PixArt's training schedule: betas = linspace(beta_start, beta_end, T), alpha_bar = cumprod(1 - beta)."""
    betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)  # [T]
    alphas_cumprod = np.cumprod(1.0 - betas)  # [T]
    alphas_cumprod.setflags(write=False)
    return NoiseSchedule(alphas_cumprod=alphas_cumprod)


# --- timestep spacings (each returns descending timesteps, one per model evaluation) ------------------------


def _check_steps(steps: int, limit: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if steps > limit:
        raise ValueError(f"steps ({steps}) cannot exceed {limit} for this sampler's schedule; use {limit} or fewer")


def dpm_timesteps(steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """DPMSolverMultistep / SA-Solver "linspace": round(linspace(0, T-1, steps+1)) reversed, the 0 dropped.

    At most T - 1 steps: the grid needs steps + 1 distinct integer timesteps in 0 .. T-1; more would repeat a
    timestep, a step of log-SNR length h = 0 that the multistep updates divide by.
    """
    _check_steps(steps, num_train_timesteps - 1)
    grid = np.linspace(0, num_train_timesteps - 1, steps + 1).round()[::-1][:-1]
    return grid.astype(np.int64).astype(np.float64)  # [steps]


def euler_timesteps(steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """EulerDiscrete / EulerAncestral "linspace": linspace(0, T-1, steps) in float32, reversed (fractional)."""
    _check_steps(steps, num_train_timesteps)
    grid = np.linspace(0, num_train_timesteps - 1, steps, dtype=np.float32)[::-1]
    return grid.astype(np.float64)  # [steps]


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """DDIM "trailing" (Lin et al. 2023, arXiv:2305.08891, Table 2): round(arange(T, 0, -T/steps)) - 1, e.g. 999, 949, ... 49.

    Chosen over "linspace" because diffusers' DDIMScheduler steps from t to t - T // steps, which only lands
    on the next scheduled timestep for "trailing"/"leading" spacing; "trailing" also starts at t = T - 1.
    """
    _check_steps(steps, num_train_timesteps)
    grid = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)) - 1
    return grid.astype(np.int64).astype(np.float64)  # [steps]


def lcm_timesteps(
    steps: int, strength: float = 1.0, original_steps: int = 50, num_train_timesteps: int = 1000
) -> np.ndarray:
    """LCM schedule (diffusers LCMScheduler.set_timesteps): `steps` evenly strided picks from the distillation
    grid k*i - 1, i = 1 .. int(original_steps * strength), k = T // original_steps; for 4 steps 999, 759, 499, 259.
    """
    _check_steps(steps, original_steps)
    steps = int(steps)
    k = num_train_timesteps // original_steps
    grid_size = int(original_steps * strength)
    if grid_size < steps:
        raise ValueError(
            f"LCM cannot take {steps} steps at denoise {strength}: only {grid_size} of its {original_steps} "
            f"distillation timesteps lie below that noise level; lower the steps or raise denoise"
        )
    origin = (np.arange(1, grid_size + 1) * k - 1)[::-1]  # [grid_size]
    picks = np.floor(np.linspace(0, grid_size, num=steps, endpoint=False)).astype(np.int64)  # [steps]
    return origin[picks].astype(np.float64)  # [steps]


# --- the plan a sampler runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingPlan:
    """Timesteps the model is evaluated at and the k-diffusion sigmas a sampler walks (one more sigma).

    `sigmas[i]` belongs to `timesteps[i]`; `sigmas[-1]` is where sampling ends (0, or sigma_min for SA-Solver).
    """

    timesteps: np.ndarray  # [n] float64 DDPM timesteps given to the model
    sigmas: torch.Tensor  # [n + 1] float64

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def timestep_for_sigma(self, sigma: float) -> float | None:
        """The scheduled timestep of the nearest scheduled sigma within 0.1 % of `sigma` (covers sigmas rounded
        to float32 / float16 by a sampler; scheduled sigmas are >= 1 % apart), else None."""
        table = self.sigmas[:-1].numpy()
        if sigma <= 0 or table.size == 0:
            return None
        nearest = int(np.argmin(np.abs(np.log(table) - np.log(sigma))))
        return float(self.timesteps[nearest]) if abs(table[nearest] / sigma - 1.0) <= 1e-3 else None


def strength_start_index(steps: int, denoise: float) -> int:
    """First step an img2img run executes (diffusers `get_timesteps`): steps - min(int(steps * denoise), steps)."""
    return steps - min(int(steps * denoise), steps)


def plan_from_timesteps(schedule: NoiseSchedule, timesteps: np.ndarray, final_sigma: float,
                        interpolate: bool) -> SamplingPlan:
    """The plan evaluating the model at `timesteps` [n] and ending at `final_sigma`; `interpolate` reads sigmas of
    fractional timesteps linearly between integers (Euler), else at the integer timesteps."""
    if interpolate:
        sigmas = schedule.sigma_at(timesteps)  # [n] fractional timesteps: linear in sigma
    else:
        sigmas = schedule.sigmas[timesteps.astype(np.int64)]  # [n]
    sigmas = np.concatenate([sigmas, [final_sigma]])  # [n + 1]
    return SamplingPlan(timesteps=np.ascontiguousarray(timesteps), sigmas=torch.from_numpy(sigmas.copy()))
