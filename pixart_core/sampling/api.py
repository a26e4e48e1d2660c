"""The one-call sampling entry point: VP latents in, VP latents out, any sampler, txt2img or img2img.

Internally the samplers walk k-diffusion latents x = x_vp * sqrt(1 + sigma^2) (= x0 + sigma * eps); this
module converts at both ends, builds the schedule, draws nothing itself except through `generator`, and
adapts `callback` / `should_stop` / `step_hook` to the samplers' k-diffusion step callback (`_StepReporter`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .denoiser import EpsDenoiser, EpsFn
from .samplers import noise_sampler_from
from .schedule import linear_schedule
from .table import DEFAULT_SAMPLER, plan_for, sampler_spec

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
StepHook = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]


class SamplingInterrupted(RuntimeError):
    """Raised between steps when `should_stop()` returned True."""


class _StepReporter:
    """Turns k-diffusion's step callback into `sample()`'s `callback(step, total, x_vp, denoised)` after each step.

    k-diffusion calls back before the update, with the step's input x. Step i's output is the input of the next
    model evaluation, so step i is reported when the model is next called (or when the sampler returns), and
    `should_stop` is polled right then, before that evaluation: stopping wastes no model call.
    """

    def __init__(self, model, sigmas: torch.Tensor, callback: StepCallback | None,
                 should_stop: Callable[[], bool] | None, step_hook: StepHook | None = None):
        self.inner_model = model
        self.sigmas = sigmas  # [n + 1] float64
        self.total = len(sigmas) - 1
        self.callback = callback
        self.should_stop = should_stop
        self.step_hook = step_hook
        self.pending: dict[str, Any] | None = None  # k-diffusion dict of the step whose output is not yet known

    def stop_if_asked(self, done: int) -> None:
        if self.should_stop is not None and self.should_stop():
            raise SamplingInterrupted(f"sampling stopped by request after {done} of {self.total} steps")

    def on_step(self, info: dict[str, Any]) -> None:
        """The k-diffusion `callback`."""
        self.pending = info

    def model(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        """The denoiser handed to the sampler: reports the finished step, polls `should_stop`, then evaluates."""
        self.finish_step(x)
        return self.inner_model(x, sigma, **extra_args)

    def finish_step(self, x: torch.Tensor, in_place: bool = True) -> torch.Tensor:
        """Report the pending step, whose output is x [B, C, H, W] (k-diffusion latent); returns x as `step_hook`
        left it. Between steps the hook's result is copied into x itself (`in_place`): every sampler here goes on
        with the very tensor it handed to the denoiser, so the next update starts from the hooked latent."""
        if self.pending is None:
            return x
        step, denoised = self.pending["i"], self.pending["denoised"]
        self.pending = None
        scale = math.sqrt(1.0 + float(self.sigmas[step + 1]) ** 2)
        if self.step_hook is not None:
            hooked = self.step_hook(step, self.total, x / scale)  # [B, C, H, W] VP latent or None
            if hooked is not None:
                x = _replace(x, hooked * scale, in_place)  # [B, C, H, W]
        if self.callback is not None:
            x_vp = x / scale  # [B, C, H, W]
            self.callback(step, self.total, x_vp, denoised)
        if step + 1 < self.total:
            self.stop_if_asked(step + 1)
        return x


def _replace(x: torch.Tensor, new: torch.Tensor, in_place: bool) -> torch.Tensor:
    """x's values set to new [B, C, H, W] (copied into x when in_place, else a new tensor in x's dtype)."""
    if not isinstance(new, torch.Tensor) or new.shape != x.shape:
        shape = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise ValueError(f"step_hook must return a latent shaped like x {tuple(x.shape)} (or None), got {shape}")
    if not in_place:
        return new.to(device=x.device, dtype=x.dtype)  # [B, C, H, W]
    with torch.inference_mode() if x.is_inference() else torch.no_grad():
        x.copy_(new)  # [B, C, H, W]
    return x


def _check_latents(name: str, value: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor) or value.ndim != 4 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a floating-point latent tensor [B, C, H, W], got {shape}")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def sample(eps_fn: EpsFn, noise: torch.Tensor, *, sampler: str = DEFAULT_SAMPLER, steps: int | None = None,
           denoise: float = 1.0, init_latent: torch.Tensor | None = None, generator: torch.Generator | None = None,
           callback: StepCallback | None = None, should_stop: Callable[[], bool] | None = None,
           step_hook: StepHook | None = None) -> torch.Tensor:
    """Run `sampler` for `steps` steps (None: its `default_steps`) and return the clean latent [B, C, H, W] in
    the model's (VP) space.

    eps_fn(x [B,C,H,W], t [B] float DDPM timestep 0..999) -> eps [B,C,H,W]: the guided epsilon (`cfg_eps_fn`).
    noise: standard-normal [B, C, H, W]; for txt2img it is x_T (diffusers' initial latents for this sampler).
    init_latent: for img2img, the VAE latent already multiplied by the VAE scale factor; the first
        `steps - int(steps * denoise)` steps are skipped and sampling starts from
        sqrt(a_t) * init_latent + sqrt(1 - a_t) * noise at the first remaining timestep (LCM: see `plan_for`).
    generator: feeds the fresh noise of the samplers that draw any (`SamplerSpec.draws_noise`); None uses
        torch's global RNG.
    callback(step_index, total_steps, x, denoised): after every step, x the VP latent after the step and
        denoised the current x0 prediction. should_stop(): polled before each step; True raises
        `SamplingInterrupted`. Computation runs in float32 for half-precision noise; returns that dtype.
    step_hook(step_index, total_steps, x) -> x' or None: after every step, before `callback`, with x the VP
        latent after the step; a returned x' (same shape) replaces it, so the next step starts from x' (e.g. a
        latent blend between batch rows, as Alfie's centring, arXiv 2408.14826). SA-Solver's corrector later
        revises a step's output from its input and the next model call, so there the hook steers the model
        inputs rather than fixing the stored latent exactly.
    """
    spec = sampler_spec(sampler)
    _check_latents("noise", noise)
    if init_latent is None and denoise != 1.0:
        raise ValueError(f"denoise {denoise} < 1 needs an init_latent (img2img); txt2img always uses denoise 1.0")
    if init_latent is not None:
        _check_latents("init_latent", init_latent)
        if init_latent.shape != noise.shape:
            raise ValueError(f"init_latent shape {tuple(init_latent.shape)} differs from noise {tuple(noise.shape)}")
    schedule = linear_schedule()
    plan = plan_for(schedule, sampler, spec.default_steps if steps is None else steps, denoise)
    sigmas = plan.sigmas
    dtype = _work_dtype(noise.dtype)
    noise = noise.to(dtype)
    sigma_start = float(sigmas[0])
    if init_latent is not None:
        x = init_latent.to(device=noise.device, dtype=dtype) + sigma_start * noise  # [B, C, H, W]
    elif spec.starts_from_sigma_max:
        x = sigma_start * noise  # [B, C, H, W]
    else:
        x = math.sqrt(1.0 + sigma_start**2) * noise  # [B, C, H, W]

    denoiser = EpsDenoiser(eps_fn, schedule, plan)
    reporter = _StepReporter(denoiser if spec.denoiser is None else spec.denoiser(denoiser), sigmas, callback,
                             should_stop, step_hook)
    options = {} if spec.options is None else dict(spec.options(schedule))
    if spec.draws_noise:
        options["noise_sampler"] = noise_sampler_from(x, generator)
    reporter.stop_if_asked(0)
    x = spec.function(reporter.model, x, sigmas, callback=reporter.on_step, disable=True, **options)
    x = reporter.finish_step(x, in_place=False)
    return x / math.sqrt(1.0 + float(sigmas[-1]) ** 2)  # [B, C, H, W] back to VP space
