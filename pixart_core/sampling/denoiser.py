"""Wrap a VP epsilon model as a k-diffusion denoiser D(x, sigma) -> x0.

Karras et al. 2022 (EDM, Table 1, "VP" column): c_in = 1 / sqrt(1 + sigma^2), c_skip = 1, c_out = -sigma,
c_noise = the DDPM timestep of sigma. The epsilon model sees the VP latent x_vp = c_in * x and the
timestep, exactly what diffusers' schedulers give the PixArt transformer.
"""

from __future__ import annotations

from typing import Callable

import torch

from .schedule import NoiseSchedule, SamplingPlan

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class EpsDenoiser:
    """Denoiser over `eps_fn(x_vp [B,C,H,W], t [B]) -> eps [B,C,H,W]` for the discrete schedule `schedule`.

    Sigma -> timestep uses the plan's own table first (so fractional Euler timesteps and integer DPM timesteps
    reach the model exactly as diffusers passes them), then log-sigma interpolation for any other sigma.
    """

    def __init__(self, eps_fn: EpsFn, schedule: NoiseSchedule, plan: SamplingPlan | None = None):
        self.eps_fn = eps_fn
        self.schedule = schedule
        self.plan = plan

    def timestep(self, sigma: float) -> float:
        """The DDPM timestep (0 .. T-1, may be fractional) the model is evaluated at for `sigma`."""
        if self.plan is not None:
            scheduled = self.plan.timestep_for_sigma(sigma)
            if scheduled is not None:
                return scheduled
        return float(self.schedule.sigma_to_t(sigma))

    def vp_input(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_vp = x / sqrt(1 + sigma^2) for x [B, C, H, W] and sigma [B] (computed in float64 on the CPU)."""
        sigma = sigma.detach().cpu().double().reshape(-1).expand(x.shape[0])  # [B]
        c_in = 1.0 / torch.sqrt(1.0 + sigma**2)  # [B]
        return x * c_in.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)  # [B, C, H, W]

    def timesteps(self, sigma: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Timesteps [B] (float32) for per-sample sigmas [B]."""
        values = [self.timestep(value) for value in sigma.detach().cpu().double().reshape(-1).tolist()]
        return torch.tensor(values, dtype=torch.float32, device=device)  # [B]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x0 prediction for k-diffusion latents x [B, C, H, W] at noise levels sigma [B] (or a scalar)."""
        sigma = torch.as_tensor(sigma).detach().cpu().double().reshape(-1).expand(x.shape[0])  # [B]
        x_vp = self.vp_input(x, sigma)  # [B, C, H, W]
        eps = self.eps_fn(x_vp, self.timesteps(sigma, x.device))  # [B, C, H, W]
        if eps.shape != x.shape:
            raise ValueError(
                f"eps_fn returned shape {tuple(eps.shape)} for input {tuple(x.shape)}; it must return epsilon with "
                f"the latent's shape (drop learned-sigma channels first, e.g. with cfg_eps_fn)"
            )
        sigma_x = sigma.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)  # [B, 1, 1, 1]
        return x - sigma_x * eps.to(x.dtype)  # [B, C, H, W]
