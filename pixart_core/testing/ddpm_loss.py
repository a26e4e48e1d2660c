"""The DDPM training objective of a learned-σ PixArt: ε mean-squared error plus the variational bound on σ.

PixArt trains like DiT (arXiv:2212.09748), which takes the hybrid objective of Improved DDPM
(arXiv:2102.09672 §3.1): L = L_simple + L_vlb, where the model's second half of channels v in [-1, 1]
interpolates the log variance between β_t and the posterior's β̃_t, and L_vlb is the KL between the true
posterior q(x_{t-1} | x_t, x_0) and the model's p(x_{t-1} | x_t), with the mean built from a stop-gradient ε
(upstream: openai/improved-diffusion `improved_diffusion/gaussian_diffusion.py`, `_vb_terms_bpd`). At t = 0 the
KL is used in place of the discretised decoder likelihood (the latents are continuous).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.0001, 0.02  # the linear schedule of every released PixArt (scheduler_config.json)


class DDPMSchedule:
    """Linear-β DDPM tables in float64 (cast on use)."""

    def __init__(self, steps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END):
        self.steps = steps
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)  # [T]
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # [T]
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])  # [T]
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        variance = betas * (1.0 - previous) / (1.0 - alphas_cumprod)  # [T] β̃_t
        self.posterior_log_variance = torch.log(torch.cat([variance[1:2], variance[1:]]))  # [T], clipped at t=0
        self.posterior_coef_x0 = betas * previous.sqrt() / (1.0 - alphas_cumprod)  # [T]
        self.posterior_coef_xt = (1.0 - previous) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod)  # [T]

    def gather(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """table[t] shaped [B, 1, 1, 1] in `like`'s dtype and device."""
        return table.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε."""
        abar = self.gather(self.alphas_cumprod, t, x0)  # [B, 1, 1, 1]
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise  # [B, C, H, W]

    def posterior_mean(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        return self.gather(self.posterior_coef_x0, t, x0) * x0 + self.gather(self.posterior_coef_xt, t, x0) * xt


def _normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def learned_sigma_loss(output: Tensor, x0: Tensor, xt: Tensor, noise: Tensor, t: Tensor,
                       schedule: DDPMSchedule, max_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """(weighted ε MSE, variational bound in bits per dim), both means over the batch.

    output [B, 2C, H, W] = [ε prediction, v]; x0, xt, noise [B, C, H, W]; t [B] integer timesteps.
    `max_weight` > 1 weights each row's ε error by min(1 / ᾱ_t, max_weight): 1/ᾱ_t is the v-prediction loss
    written for an ε model (||v̂ - v||² = ||ε̂ - ε||² / ᾱ_t, arXiv:2202.00512 §4), truncated like Min-SNR
    (arXiv:2303.09556) so the noisy steps that decide layout and colour are not drowned by the fine-detail ones."""
    eps, v = output.float().chunk(2, dim=1)  # [B, C, H, W] each
    weight = (1.0 / schedule.gather(schedule.alphas_cumprod, t, xt)).clamp(max=max_weight)  # [B, 1, 1, 1]
    mse = ((eps - noise).pow(2) * weight).mean()
    abar = schedule.gather(schedule.alphas_cumprod, t, xt)  # [B, 1, 1, 1]
    pred_x0 = (xt - (1.0 - abar).sqrt() * eps.detach()) / abar.sqrt()  # [B, C, H, W], mean from frozen ε
    log_beta = schedule.gather(schedule.betas.log(), t, xt)  # [B, 1, 1, 1]
    log_tilde = schedule.gather(schedule.posterior_log_variance, t, xt)  # [B, 1, 1, 1]
    frac = (v + 1.0) / 2.0  # [B, C, H, W]
    model_logvar = frac * log_beta + (1.0 - frac) * log_tilde  # [B, C, H, W]
    true_mean = schedule.posterior_mean(x0, xt, t)  # [B, C, H, W]
    model_mean = schedule.posterior_mean(pred_x0, xt, t)  # [B, C, H, W]
    kl = _normal_kl(true_mean, log_tilde.expand_as(xt), model_mean, model_logvar)  # [B, C, H, W]
    vb = kl.mean() / math.log(2.0)
    return mse, vb
