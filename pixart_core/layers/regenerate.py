"""Regenerating one layer of a stack in context, the others kept as they are (`engine.regenerate_layer`).

A foreground layer: the other layers' composite is encoded, the box's latent cells are sampled afresh by latent
blending while the rest of the canvas stays known, with regional prompting (the stack's global caption, the
layer's caption in its box, the background caption around it) so the new content takes the neighbours' light
and style; its attention and the matte give the new alpha, 0 outside the box. The context is the whole canvas,
not a crop around the box: the scene's caption (its place words) describes the canvas, and the DiT samples the
size it was made for. In the shapes world a crop with 2 tokens of margin recoloured 3 of 10 layers, the whole
canvas 10 of 10 (benchmarks/RESULTS.md); it costs one plain image. The background: the old background
re-sampled at partial strength with its caption.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..pixart.regions import Region, RegionalPrompt
from .backend import LayerBackend
from .latent_regions import box_mask, latent_mask
from .layout import retold
from .layer_alpha import attention_hint, content_positions, matte_in_box
from .phases import Captions, run_phase
from .pixels import alpha_over
from .stack import Layer, LayerStack

BACKGROUND_STRENGTH = 0.7  # share of the schedule re-run when the background is regenerated


def _tensor(image: Image.Image) -> torch.Tensor:
    """PIL -> [3, H, W] float32 in 0..1 (RGB)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def _captions(backend: LayerBackend, stack: LayerStack, texts: list[str], guidance: float):
    """T5 states [K, L, C] and masks [K, L] of `texts` plus the stack's negative; the negative or None."""
    negative_text = stack.layout.negative if stack.layout is not None else ""
    hidden, mask = backend.encode_text(texts + [negative_text])  # [K + 1, L, C], [K + 1, L]
    hidden, mask = hidden.to(backend.device, backend.dtype), mask.to(backend.device)
    negative = (hidden[-1:], mask[-1:]) if guidance > 1.0 else None
    return hidden, mask, negative


def _background_prompt(stack: LayerStack) -> str:
    if stack.layout is not None:
        return stack.layout.background_prompt
    return stack.layers[0].prompt


def regenerate_foreground(backend: LayerBackend, stack: LayerStack, position: int, prompt: str, seed: int,
                          steps: int, guidance: float, sampler: str) -> LayerStack:
    layer = stack.layers[position]
    width, height = stack.width, stack.height
    others = [item.image for index, item in enumerate(stack.layers) if index != position]
    context = _tensor(alpha_over(others, width, height))  # [3, H, W]
    known = backend.encode_pixels(context[None])  # [1, 4, h, w]
    hole = latent_mask(box_mask(layer.box, height, width), dilate=0)  # [1, 1, h, w]

    # the scene's prompt, with the layer's old prompt retold as the new one (it would ask for the old content)
    global_prompt = retold(stack.layout.prompt, layer.prompt, prompt) if stack.layout is not None else prompt
    background_prompt = _background_prompt(stack)
    texts = [global_prompt, prompt] + ([background_prompt] if background_prompt.strip() else [])
    hidden, mask, negative = _captions(backend, stack, texts, guidance)
    extra = {"background": hidden[2:3], "background_mask": mask[2:3]} if len(texts) == 3 else {}
    regional = RegionalPrompt(hidden[:1], mask[:1], [Region(hidden[1:2], layer.box, mask[1:2], layer.name)],
                              (width, height), **extra)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn(tuple(known.shape), generator=generator, dtype=torch.float32).to(backend.device)
    result = run_phase(backend, f"regenerate: {layer.name}", noise, Captions(regional, negative), guidance=guidance,
                       sampler=sampler, steps=steps, known=known, hole=hole, capture=True, generator=generator)

    image = torch.round(backend.decode_pixels(result.latent)[0] * 255.0) / 255.0  # [3, H, W]
    _, start, stop = regional.spans[1]
    columns = [start + p for p in content_positions(backend.tokenizer, prompt) if start + p < stop]
    hint = attention_hint(result.attention, result.grid_hw, columns, layer.box, (height, width))  # [H, W]
    alpha, colour = matte_in_box(image, hint, layer.box)  # [H, W], [3, H, W]
    alpha_u8 = np.clip(np.rint(alpha.numpy() * 255.0), 0, 255).astype(np.uint8)  # [H, W]
    rgb = np.clip(np.rint(colour.permute(1, 2, 0).numpy() * 255.0), 0, 255).astype(np.uint8)  # [H, W, 3]
    rgb[alpha_u8 == 0] = 0
    picture = Image.fromarray(np.dstack([rgb, alpha_u8]), "RGBA")
    return stack.replace(position, Layer(layer.name, picture, layer.box, prompt))


def regenerate_background(backend: LayerBackend, stack: LayerStack, prompt: str, seed: int, steps: int,
                          guidance: float, sampler: str) -> LayerStack:
    layer = stack.layers[0]
    hidden, mask, negative = _captions(backend, stack, [prompt], guidance)
    known = backend.encode_pixels(_tensor(layer.image)[None])  # [1, 4, h, w]
    generator = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn(tuple(known.shape), generator=generator, dtype=torch.float32).to(backend.device)
    denoise = max(BACKGROUND_STRENGTH, (1 + 0.5) / steps) if steps > 1 else 1.0
    result = run_phase(backend, "regenerate: background", noise, Captions((hidden[:1], mask[:1]), negative),
                       guidance=guidance, sampler=sampler, steps=steps, denoise=min(1.0, denoise), known=known,
                       generator=generator)
    pixels = backend.decode_pixels(result.latent)[0]  # [3, H, W]
    rgb = np.clip(np.rint(pixels.permute(1, 2, 0).numpy() * 255.0), 0, 255).astype(np.uint8)  # [H, W, 3]
    picture = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA")
    return stack.replace(0, Layer(layer.name, picture, layer.box, prompt))
