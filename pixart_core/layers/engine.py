"""Layered generation: one coherent picture from a region layout, split into a layer stack that re-composites to
it, and per-layer regeneration in context.

`generate_layers` runs these phases (budget: `budget.py`):
  1. composite   one regional-prompting sampling of the whole canvas with CFG (`pixart_core.pixart.regions`:
                 global caption everywhere, each layer's caption in its box, the background caption elsewhere),
                 capturing the cross-attention of the late steps;
  2. alpha       per layer, the attention of its words inside its box refined by the matte (`layer_alpha.py`);
  3. background  the foregrounds' footprint inpainted with the background caption by latent blending over the
                 footprint's crop, at partial strength (`phases.py`);
  4. amodal      per lower layer whose box an upper layer covers, that cover inpainted over the layer's box crop
                 with the layer's caption, then matted again, so moving a layer reveals content, not a hole;
  5. split       8-bit RGBA layers whose alpha-over equals the composite (`exact_split.py`).
`regenerate_layer` inpaints one layer's box over the composite of the other layers, its caption regional, and
mattes it again; every other layer is kept as it is (the same objects, so the same pixels).
"""

from __future__ import annotations

import logging
import math
import numbers
import random

import numpy as np
import torch

from ..pixart.regions import Region, RegionalPrompt
from ..sampling import DEFAULT_SAMPLER, MAX_STEPS, sampler_spec
from .backend import LayerBackend
from .budget import phase_schedule
from .exact_split import split_layers
from .latent_regions import box_crop, box_mask, fill_hole, latent_mask, mask_crop
from .layer_alpha import attention_hint, content_positions, matte_in_box
from .layout import BACKGROUND_NAME, Layout, parse_layout
from .phases import Captions, run_phase
from .stack import Layer, LayerStack

log = logging.getLogger(__name__)


def check_canvas(width: int, height: int, multiple: int, owner: str = "layout") -> None:
    """ValueError naming width/height when the canvas is not a multiple of the DiT's token size in pixels."""
    for name, value in (("width", width), ("height", height)):
        if value % multiple:
            raise ValueError(f"{owner}.{name}: {value} is not a multiple of {multiple}; layered generation samples "
                             f"the exact size, use e.g. {max(multiple, value // multiple * multiple)}")


def _check_settings(steps, guidance, sampler) -> str:
    sampler = DEFAULT_SAMPLER if sampler is None else sampler
    sampler_spec(sampler)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps: must be a whole number from 1 to {MAX_STEPS}, got {steps!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ValueError(f"guidance: must be a finite number >= 0 (usual 4.5), got {guidance!r}")
    return sampler


def _noise(backend: LayerBackend, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(backend.device)  # [1, 4, h, w]


def _quantised(pixels: torch.Tensor) -> torch.Tensor:
    return torch.round(pixels * 255.0) / 255.0  # what an 8-bit file holds


class _Generation:
    """The state of one `generate_layers` run."""

    def __init__(self, backend: LayerBackend, layout: Layout, seed: int, steps: int, guidance: float, sampler: str):
        self.backend, self.layout = backend, layout
        self.steps, self.guidance, self.sampler = steps, guidance, sampler
        self.generator = torch.Generator("cpu").manual_seed(int(seed))
        self.patch = int(backend.model.config.patch_size)
        self.latent_hw = (layout.height // 8, layout.width // 8)
        self.canvas_tokens = (self.latent_hw[0] // self.patch) * (self.latent_hw[1] // self.patch)
        texts = [layout.prompt, layout.background_prompt] + [spec.prompt for spec in layout.layers]
        hidden, mask = backend.encode_text(texts + [layout.negative])  # [K, L, C], [K, L]
        self.hidden, self.mask = hidden.to(backend.device, backend.dtype), mask.to(backend.device)
        self.negative = (self.hidden[-1:], self.mask[-1:]) if guidance > 1.0 else None

    def caption(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hidden[index:index + 1], self.mask[index:index + 1]  # [1, L, C], [1, L]

    def composite(self):
        layout = self.layout
        regions = []
        for index, spec in enumerate(layout.layers):
            context, mask = self.caption(2 + index)
            regions.append(Region(context, spec.box, mask, spec.name))
        regional = RegionalPrompt(*self.caption(0), regions, (layout.width, layout.height),
                                  background=self.caption(1)[0], background_mask=self.caption(1)[1])
        noise = _noise(self.backend, (1, 4, *self.latent_hw), self.generator)
        result = run_phase(self.backend, "composite", noise, Captions(regional, self.negative), guidance=self.guidance,
                           sampler=self.sampler, steps=self.steps, capture=True, generator=self.generator)
        return regional, result

    def inpaint(self, phase: str, known: torch.Tensor, hole: torch.Tensor, crop, caption: int, capture: bool):
        """(completed crop latent, attention or None, grid) of an inpainting phase over `crop`, within budget."""
        schedule = phase_schedule(self.sampler, self.steps, crop.tokens(self.patch), self.canvas_tokens)
        start = fill_hole(crop.latent(known), crop.latent(hole))  # [1, 4, ch, cw]
        if schedule is None:
            log.info("%s: no step fits the budget at %d steps; the hole is filled smoothly", phase, self.steps)
            return start, None, None
        noise = _noise(self.backend, tuple(start.shape), self.generator)
        result = run_phase(self.backend, phase, noise, Captions(self.caption(caption), self.negative),
                           guidance=self.guidance, sampler=self.sampler, steps=schedule.steps,
                           denoise=schedule.denoise, known=start, hole=crop.latent(hole), capture=capture,
                           generator=self.generator)
        return result.latent, result.attention, result.grid_hw


def _paste(target: torch.Tensor, crop, pixels: torch.Tensor) -> torch.Tensor:
    out = target.clone()
    crop.image(out)[...] = pixels
    return out


def _generate(backend: LayerBackend, layout: Layout, seed: int, steps: int, guidance: float,
              sampler: str) -> LayerStack:
    run = _Generation(backend, layout, seed, steps, guidance, sampler)
    height, width = layout.height, layout.width
    regional, composite = run.composite()
    latent = composite.latent  # [1, 4, h, w]
    image = _quantised(backend.decode_pixels(latent)[0])  # [3, H, W]
    alphas, colours, hints = [], [], []
    for index, spec in enumerate(layout.layers):
        _, start, stop = regional.spans[1 + index]
        columns = [start + p for p in content_positions(backend.tokenizer, spec.prompt) if start + p < stop]
        hint = attention_hint(composite.attention, composite.grid_hw, columns, spec.box, (height, width))  # [H, W]
        alpha, colour = matte_in_box(image, hint, spec.box)  # [H, W], [3, H, W]
        alphas.append(alpha)
        colours.append(colour)
        hints.append(hint)

    background = image.clone()  # [3, H, W]
    footprint = torch.stack(alphas).amax(dim=0)  # [H, W]
    hole = latent_mask(footprint)  # [1, 1, h, w]
    crop = mask_crop(hole, run.patch)
    if crop is not None:
        filled, _, _ = run.inpaint("background", latent, hole, crop, caption=1, capture=False)
        background = _paste(background, crop, backend.decode_pixels(filled)[0])

    for index, spec in enumerate(layout.layers[:-1]):
        inside = box_mask(spec.box, height, width)  # [H, W]
        cover = torch.stack(alphas[index + 1:]).amax(dim=0) * inside  # [H, W] upper layers over this box
        if not bool((cover > 0).any()):
            continue
        crop = box_crop(spec.box, run.latent_hw, run.patch)
        hole = latent_mask(cover) * latent_mask(inside, dilate=0)  # [1, 1, h, w]
        filled, attention, grid_hw = run.inpaint(f"amodal: {spec.name}", latent, hole, crop, caption=2 + index,
                                                 capture=True)
        completed = _paste(image, crop, backend.decode_pixels(filled)[0])  # [3, H, W]
        hint = hints[index]
        if attention is not None:
            x0, y0, _, _ = crop.pixels
            local = (spec.box[0] - x0, spec.box[1] - y0, spec.box[2] - x0, spec.box[3] - y0)
            crop_hint = attention_hint(attention, grid_hw, content_positions(backend.tokenizer, spec.prompt),
                                       local, crop.image(image).shape[-2:])  # [ch, cw]
            hint = torch.maximum(hint, _paste(torch.zeros_like(hint), crop, crop_hint) * cover)  # [H, W]
        hidden_alpha, hidden_colour = matte_in_box(completed, hint, spec.box)
        alphas[index] = alphas[index] * (1 - cover) + hidden_alpha * cover  # [H, W]
        colours[index] = colours[index] * (1 - cover) + hidden_colour * cover  # [3, H, W]

    images = split_layers(image, background, alphas, colours)
    layers = [Layer(BACKGROUND_NAME, images[0], (0, 0, width, height), layout.background_prompt)]
    layers += [Layer(spec.name, picture, spec.box, spec.prompt) for spec, picture in zip(layout.layers, images[1:])]
    stack = LayerStack(layers, width, height, layout=layout)
    error = np.abs(np.asarray(stack.composite, np.float64) - np.rint(image.permute(1, 2, 0).numpy() * 255)).mean()
    log.debug("layers: %d layers re-composite within %.3f/255 (mean) of the generated picture", len(layers), error)
    return stack


def generate_layers(backend: LayerBackend, layout: Layout | dict | str, *, seed: int = 0, steps: int = 20,
                    guidance: float = 4.5, sampler: str = DEFAULT_SAMPLER) -> LayerStack:
    """A `LayerStack` (background first, then the layout's layers bottom to top) from a layout (dict, JSON text
    or `Layout`), validated before any model work; width and height must be multiples of 16 (the DiT's token
    size in pixels)."""
    layout = parse_layout(layout)
    check_canvas(layout.width, layout.height, backend.patch_pixels)
    sampler = _check_settings(steps, guidance, sampler)
    with torch.inference_mode():
        return _generate(backend, layout, seed, int(steps), float(guidance), sampler)


def _resolve_index(stack: LayerStack, index) -> int:
    if isinstance(index, str):
        names = [layer.name for layer in stack.layers]
        if index not in names:
            raise ValueError(f"index: no layer named {index!r}; the stack has {', '.join(map(repr, names))}")
        return names.index(index)
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not -len(stack) <= index < len(stack):
        raise ValueError(f"index: {index!r} is not a layer index or name; the stack has {len(stack)} layers "
                         f"(0 is the background)")
    return int(index) % len(stack)


def regenerate_layer(backend: LayerBackend, stack: LayerStack, index: int | str, *, prompt: str | None = None,
                     seed: int | None = None, steps: int = 20, guidance: float = 4.5,
                     sampler: str = DEFAULT_SAMPLER) -> LayerStack:
    """A new stack with layer `index` (int, or a layer name) sampled again in context: its box inpainted over the
    composite of the other layers with its caption regional, then matted; every other layer is the same object
    (pixel-identical) and the composite is the new layers' alpha-over. prompt None keeps the layer's prompt; a
    stack loaded from a PSD / ORA / folder works too (boxes from its layers). seed None draws a new one."""
    if not isinstance(stack, LayerStack):
        raise ValueError(f"stack: must be a LayerStack, got {type(stack).__name__}")
    position = _resolve_index(stack, index)
    layer = stack.layers[position]
    text = layer.prompt if prompt is None else prompt
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"prompt: layer {layer.name!r} has no prompt (a stack loaded from a file keeps none); "
                         f"pass prompt='...' describing it")
    check_canvas(stack.width, stack.height, backend.patch_pixels, owner="stack")
    sampler = _check_settings(steps, guidance, sampler)
    if seed is None:
        seed = random.SystemRandom().randrange(2**63)
        log.info("regenerate %r: seed %d", layer.name, seed)
    with torch.inference_mode():
        from .regenerate import regenerate_background, regenerate_foreground

        if position == 0:
            return regenerate_background(backend, stack, text, seed, int(steps), float(guidance), sampler)
        return regenerate_foreground(backend, stack, position, text, seed, int(steps), float(guidance), sampler)
