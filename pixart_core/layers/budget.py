"""The compute budget of layered generation, counted as the sum over DiT calls of batch x image tokens.

For N foreground layers the engine stays within (1 + 0.5 N) x one plain image of the same size, steps and CFG:
the composite pass costs one plain image, and every later phase (the background completion, each amodal
completion) gets at most half of one, spent as a partial-strength inpainting over a crop: a phase over a crop of
`t` of the canvas' `T` tokens may run `floor(0.5 * steps * T / t)` of the `steps` sampler steps (each one DiT
call per CFG batch, as every sampler of `pixart_core.sampling.table` evaluates the model once per step).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sampling import linear_schedule, plan_for, sampler_spec
from ..sampling.table import SHORTER_GRID

PHASE_SHARE = 0.5  # of one plain image, per phase after the composite
MAX_STRENGTH = 0.75  # the most of the schedule an inpainting phase re-runs (keeps the composite's light)


class TokenCounter:
    """Context manager counting `batch x image tokens` over every forward call of `model` while inside.

    `with TokenCounter(model) as counter: ...` then `counter.tokens` (and `counter.calls`)."""

    def __init__(self, model):
        self.model = model
        self.tokens = 0
        self.calls = 0
        self._hook = None

    def _count(self, module, args, kwargs) -> None:
        x = args[0] if args else kwargs["x"]
        patch = module.config.patch_size
        self.tokens += int(x.shape[0]) * (int(x.shape[-2]) // patch) * (int(x.shape[-1]) // patch)
        self.calls += 1

    def __enter__(self) -> TokenCounter:
        self._hook = self.model.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def budget_limit(foreground_layers: int) -> float:
    """The allowed cost as a multiple of one plain image: 1 + 0.5 N."""
    return 1.0 + PHASE_SHARE * foreground_layers


@dataclass(frozen=True)
class PhaseSchedule:
    """How one inpainting phase samples: `steps` and `denoise` for `sample()`, and the model calls it makes."""

    steps: int
    denoise: float
    calls: int


def phase_schedule(sampler: str, steps: int, crop_tokens: int, canvas_tokens: int,
                   max_strength: float = MAX_STRENGTH, share: float = PHASE_SHARE) -> PhaseSchedule | None:
    """The strongest partial-strength schedule whose calls x crop tokens stay within `share` of a plain image
    (`steps` calls x canvas tokens), at most `max_strength` of the schedule; None when not one step fits."""
    allowed = min(int(share * steps * canvas_tokens // max(1, crop_tokens)), int(max_strength * steps))
    if allowed < 1:
        return None
    denoise = min(1.0, (allowed + 0.5) / steps)  # int(steps * denoise) == allowed, safe from rounding
    if sampler_spec(sampler).img2img == SHORTER_GRID:  # LCM runs every step of a shorter grid
        return PhaseSchedule(steps=allowed, denoise=min(1.0, allowed / steps), calls=allowed)
    calls = len(plan_for(linear_schedule(), sampler, steps, denoise).sigmas) - 1
    return PhaseSchedule(steps=steps, denoise=denoise, calls=calls)
