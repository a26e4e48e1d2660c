"""SA-Solver: stochastic Adams predictor-corrector (Xue et al. 2023, arXiv:2309.05019), data-prediction form.

Between log-SNR times lambda_s < lambda_t (lambda = -log sigma, h = lambda_t - lambda_s, c = 1 + tau^2) one
step in k-diffusion latents is

    x_t = exp(-tau^2 h) (sigma_t / sigma_s) x_s + c * sum_k J_k x0_k + sigma_t sqrt(1 - exp(-2 tau^2 h)) xi,
    J_k = integral over u in [-h, 0] of l_k(u) exp(c u) du,

with l_k the Lagrange basis over the data predictions' lambdas (shifted by -lambda_t). The predictor
extrapolates from past x0's (Adams-Bashforth); the corrector re-does the previous step with the new x0 and
the same noise xi (Adams-Moulton), "PEC" mode: the model is not re-evaluated after correcting. Order-2 steps
carry the extra term of diffusers' SASolverScheduler (`schedulers/scheduling_sasolver.py`) and of the official
PixArt-alpha `diffusion/model/sa_solver.py`, so results match them.
PixArt uses predictor and corrector order 2 and tau = 1 for 200 <= t <= 800, else 0 (`pixart_tau`).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from tqdm.auto import trange

from .samplers import batch_ones, default_noise_sampler, report_step
from .schedule import NoiseSchedule, linear_schedule

TauFn = Callable[[float], float]


def pixart_tau(schedule: NoiseSchedule | None = None, low: int = 200, high: int = 800, value: float = 1.0) -> TauFn:
    """tau(sigma) = value while the timestep of sigma lies in [low, high], else 0 (PixArt's SA-Solver setting)."""
    schedule = linear_schedule() if schedule is None else schedule
    sigma_low = float(schedule.sigmas[low]) * (1.0 - 1e-9)
    sigma_high = float(schedule.sigmas[high]) * (1.0 + 1e-9)

    def tau(sigma: float) -> float:
        return value if sigma_low <= sigma <= sigma_high else 0.0

    return tau


def _exp_moments(count: int, h: float, c: float) -> list[float]:
    """I_m = integral over u in [-h, 0] of u^m exp(c u) du, m = 0 .. count-1 (integration by parts)."""
    decay = math.exp(-c * h)
    moments = [-math.expm1(-c * h) / c]
    for m in range(1, count):
        moments.append(-((-h) ** m) * decay / c - m / c * moments[-1])
    return moments


def lagrange_exp_weights(nodes: list[float], h: float, c: float) -> list[float]:
    """J_k = integral over u in [-h, 0] of l_k(u) exp(c u) du, l_k the Lagrange basis polynomial of `nodes`."""
    moments = _exp_moments(len(nodes), h, c)
    weights = []
    for k, node in enumerate(nodes):
        others = [other for j, other in enumerate(nodes) if j != k]
        coefficients = np.polynomial.polynomial.polyfromroots(others) if others else np.ones(1)  # ascending powers
        denominator = math.prod(node - other for other in others)
        weights.append(sum(float(a) * moment for a, moment in zip(coefficients, moments)) / denominator)
    return weights


def sa_update(x: torch.Tensor, sigma_from: float, sigma_to: float, node_sigmas: list[float],
              denoised: list[torch.Tensor], tau: float, noise: torch.Tensor, corrector: bool) -> torch.Tensor:
    """One SA-Solver step from sigma_from to sigma_to using x0 predictions `denoised` at `node_sigmas`."""
    lambda_from, lambda_to = -math.log(sigma_from), -math.log(sigma_to)
    h = lambda_to - lambda_from
    c = 1.0 + tau**2
    nodes = [-math.log(s) - lambda_to for s in node_sigmas]
    weights = lagrange_exp_weights(nodes, h, c)
    if len(weights) == 2:  # diffusers' / official order-2 modification (like UniPC); keeps the convergence order
        bracket = h * c - 1.0 + math.exp(-c * h)
        if corrector:
            extra = h / 2 - bracket / (c**2 * h)
        else:
            extra = (h**2 / 2 - bracket / c**2) / (nodes[0] - nodes[1])
        weights[0] += extra
        weights[1] -= extra
    x_next = (math.exp(-(tau**2) * h) * sigma_to / sigma_from) * x  # [B, C, H, W]
    for weight, x0 in zip(weights, denoised):
        x_next = x_next + (c * weight) * x0  # [B, C, H, W]
    if tau != 0.0:
        x_next = x_next + (sigma_to * math.sqrt(-math.expm1(-2.0 * tau**2 * h))) * noise  # [B, C, H, W]
    return x_next


@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, tau=None,
                     predictor_order=2, corrector_order=2, noise_sampler=None):
    """SA-Solver in PEC mode with lower-order warm-up and final steps, as diffusers' SASolverScheduler.

    Draws one noise sample per step (also on the last, deterministic one) so that the generator advances as
    in diffusers. `tau(sigma)` defaults to `pixart_tau()`. A final sigma of 0 ends with x = x0.
    """
    for name, order in (("predictor_order", predictor_order), ("corrector_order", corrector_order)):
        if order not in (1, 2, 3, 4):
            raise ValueError(f"{name} must be 1, 2, 3 or 4, got {order!r}")
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, extra_args.get("seed")) if noise_sampler is None else noise_sampler
    tau = pixart_tau() if tau is None else tau
    s_in = batch_ones(x)
    steps = len(sigmas) - 1
    sigma_list = [float(s) for s in sigmas]
    history: list[torch.Tensor] = []  # x0 predictions, newest last
    pending_correction = None  # (x before the last predictor, its noise, corrector order, its tau)
    for i in trange(steps, disable=disable):
        sigma, sigma_next = sigma_list[i], sigma_list[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)  # [B, C, H, W]
        report_step(callback, i, x, sigmas, denoised)
        if pending_correction is not None:
            x_last, noise_last, order, tau_last = pending_correction
            values = [denoised] + history[::-1][: order - 1]
            x = sa_update(x_last, sigma_list[i - 1], sigma, sigma_list[i - order + 1 : i + 1][::-1], values,
                          tau_last, noise_last, corrector=True)  # [B, C, H, W]
        history = (history + [denoised])[-max(predictor_order, corrector_order):]
        noise = noise_sampler(sigmas[i], sigmas[i + 1])  # [B, C, H, W]
        warmed_up = min(i, max(predictor_order, corrector_order - 1))
        order = min(predictor_order, steps - i, warmed_up + 1)
        next_corrector_order = min(corrector_order, steps - i + 1, warmed_up + 2)
        tau_now = float(tau(sigma))
        pending_correction = (x, noise, next_corrector_order, tau_now)
        if sigma_next == 0.0:
            x = denoised
        else:
            x = sa_update(x, sigma, sigma_next, sigma_list[i - order + 1 : i + 1][::-1], history[::-1][:order],
                          tau_now, noise, corrector=False)  # [B, C, H, W]
    return x
