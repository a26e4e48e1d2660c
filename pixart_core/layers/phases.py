"""One sampling phase of layered generation: guided sampling of a latent (the whole canvas or a crop), optionally
prompted regionally, optionally inpainting a hole, optionally capturing cross-attention of the late steps.

Inpainting is latent blending with the frozen model (Blended Latent Diffusion, arXiv 2206.02779; RePaint,
arXiv 2201.09865, without its resampling): after every step the cells outside the hole are set to the known
latent noised to that step's level with the phase's starting noise, x = (x0 + sigma * noise) / sqrt(1 + sigma^2)
in VP space, so only the hole is generated and it grows into its surroundings. A partial-strength phase starts
from the known latent (the hole pre-filled smoothly, `latent_regions.fill_hole`) noised to a middle level and
runs only the remaining steps.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..pixart.regions import RegionalPrompt
from ..sampling import cfg_eps_fn, linear_schedule, plan_for, sample
from .backend import LayerBackend

CAPTURE_FROM = 0.5  # attention is captured over the second half of a phase's steps


@dataclass
class PhaseResult:
    """latent [1, 4, h, w] (scaled, VP space); attention [h*w/p^2, L] of the conditional row, or None; the token
    grid (gh, gw) the attention lives on."""

    latent: Tensor
    attention: Tensor | None
    grid_hw: tuple[int, int] | None


@dataclass
class Captions:
    """The conditional caption (T5 states [1, L, C] and mask [1, L], or a RegionalPrompt) and the negative."""

    positive: tuple[Tensor, Tensor] | RegionalPrompt
    negative: tuple[Tensor, Tensor] | None


class _KnownBlend:
    """`sample(step_hook=...)`: outside the hole, x becomes the known latent noised to the step's level."""

    def __init__(self, known: Tensor, hole: Tensor, noise: Tensor, sigmas):
        self.known, self.hole, self.noise, self.sigmas = known, hole, noise, sigmas

    def __call__(self, step: int, total: int, x: Tensor) -> Tensor:
        sigma = float(self.sigmas[step + 1])
        noised = (self.known + sigma * self.noise) / math.sqrt(1.0 + sigma * sigma)  # [1, 4, h, w] VP
        hole = self.hole.to(device=x.device, dtype=x.dtype)  # [1, 1, h, w]
        return noised.to(x.dtype) * (1.0 - hole) + x * hole  # [1, 4, h, w]


def _eps_fn(backend: LayerBackend, captions: Captions, guidance: float):
    positive = captions.positive
    context, mask = (positive.context, positive.mask) if isinstance(positive, RegionalPrompt) else positive
    negative, negative_mask = captions.negative if captions.negative is not None else (None, None)
    return cfg_eps_fn(backend.model, context, mask, negative, negative_mask, guidance if negative is not None else 0)


def run_phase(backend: LayerBackend, phase: str, noise: Tensor, captions: Captions, *, guidance: float,
              sampler: str, steps: int, denoise: float = 1.0, known: Tensor | None = None, hole: Tensor | None = None,
              capture: bool = False, generator: torch.Generator | None = None) -> PhaseResult:
    """Sample one latent [1, 4, h, w] (noise: standard normal of that shape, on the model's device).

    known: the scaled latent to start from (img2img at `denoise`) and, with `hole` [1, 1, h, w] (1 = generate),
    to keep outside the hole at every step. capture: record the cross-attention of the conditional row over the
    second half of the steps. Progress goes to backend.on_progress / on_preview as `phase`; should_stop is
    polled between steps."""
    model = backend.model
    use_cfg = guidance > 1.0 and captions.negative is not None
    eps_fn = _eps_fn(backend, captions, guidance)
    total = len(plan_for(linear_schedule(), sampler, steps, denoise).sigmas) - 1
    hook = None
    if hole is not None and known is not None:
        hook = _KnownBlend(known.float(), hole.float(), noise.float(),
                           plan_for(linear_schedule(), sampler, steps, denoise).sigmas)
    recorder = model.capture_attention() if capture else None
    first_captured = min(total - 1, math.floor(CAPTURE_FROM * total))

    def report(step: int, steps_total: int, x: Tensor, denoised: Tensor) -> None:
        if backend.on_progress is not None:
            backend.on_progress(phase, step + 1, steps_total)
        if backend.on_preview is not None:
            backend.on_preview(phase, step + 1, steps_total, denoised)

    with contextlib.ExitStack() as stack:
        if isinstance(captions.positive, RegionalPrompt):
            rows = range(1, 2) if use_cfg else range(1)
            stack.enter_context(model.regional_prompting(captions.positive, rows=rows))
        if recorder is not None and first_captured == 0:
            stack.enter_context(recorder)

        def step_hook(step: int, steps_total: int, x: Tensor) -> Tensor | None:
            if recorder is not None and step + 1 == first_captured:
                stack.enter_context(recorder)  # before the model call of step `first_captured`
            return hook(step, steps_total, x) if hook is not None else None

        latent = sample(eps_fn, noise, sampler=sampler, steps=steps, denoise=denoise,
                        init_latent=known if denoise < 1.0 else None, generator=generator, callback=report,
                        should_stop=backend.should_stop, step_hook=step_hook)  # [1, 4, h, w]
    if hole is not None and known is not None:
        hole_ = hole.to(device=latent.device, dtype=latent.dtype)  # [1, 1, h, w]
        latent = known.to(latent.dtype) * (1.0 - hole_) + latent * hole_  # [1, 4, h, w] the known cells exact
    if recorder is None:
        return PhaseResult(latent, None, None)
    return PhaseResult(latent, recorder.cross_attention()[-1], recorder.grid_hw)  # [N, L] conditional row
