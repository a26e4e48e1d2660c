"""Regenerating one layer of a stack in context, the others kept as they are (`engine.regenerate_layer`).

A foreground layer: the crop around its box (plus a margin of context) of the other layers' composite is
encoded, the box's latent cells are sampled afresh by latent blending while the rest of the crop stays known,
with regional prompting (the stack's global caption, the layer's caption in its box, the background caption
around it) so the new content takes the neighbours' light and style; its attention and the matte give the new
alpha, 0 outside the box. The background: the old background re-sampled at partial strength with its caption.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..pixart.regions import Region, RegionalPrompt
from .backend import LayerBackend
from .latent_regions import box_crop, box_mask, latent_mask
from .layout import retold
from .layer_alpha import attention_hint, content_positions, matte_in_box
from .phases import Captions, run_phase
from .pixels import alpha_over
from .stack import Layer, LayerStack

MARGIN_TOKENS = 2  # context around the box, in DiT tokens per side
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
    patch = int(backend.model.config.patch_size)
    others = [item.image for index, item in enumerate(stack.layers) if index != position]
    context = _tensor(alpha_over(others, width, height))  # [3, H, W]
    crop = box_crop(layer.box, (height // 8, width // 8), patch, MARGIN_TOKENS)
    x0, y0, x1, y1 = crop.pixels
    local = (max(0.0, layer.box[0] - x0), max(0.0, layer.box[1] - y0), min(x1 - x0, layer.box[2] - x0),
             min(y1 - y0, layer.box[3] - y0))
    known = backend.encode_pixels(crop.image(context)[None])  # [1, 4, ch, cw]
    hole = latent_mask(box_mask(local, y1 - y0, x1 - x0), dilate=0)  # [1, 1, ch, cw]

    # the scene's prompt, with the layer's old prompt retold as the new one (it would ask for the old content)
    global_prompt = retold(stack.layout.prompt, layer.prompt, prompt) if stack.layout is not None else prompt
    background_prompt = _background_prompt(stack)
    texts = [global_prompt, prompt] + ([background_prompt] if background_prompt.strip() else [])
    hidden, mask, negative = _captions(backend, stack, texts, guidance)
    extra = {"background": hidden[2:3], "background_mask": mask[2:3]} if len(texts) == 3 else {}
    regional = RegionalPrompt(hidden[:1], mask[:1], [Region(hidden[1:2], local, mask[1:2], layer.name)],
                              (x1 - x0, y1 - y0), **extra)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn(tuple(known.shape), generator=generator, dtype=torch.float32).to(backend.device)
    result = run_phase(backend, f"regenerate: {layer.name}", noise, Captions(regional, negative), guidance=guidance,
                       sampler=sampler, steps=steps, known=known, hole=hole, capture=True, generator=generator)

    image = context.clone()  # [3, H, W]
    crop.image(image)[...] = torch.round(backend.decode_pixels(result.latent)[0] * 255.0) / 255.0
    _, start, stop = regional.spans[1]
    columns = [start + p for p in content_positions(backend.tokenizer, prompt) if start + p < stop]
    crop_hint = attention_hint(result.attention, result.grid_hw, columns, local, (y1 - y0, x1 - x0))  # [ch, cw]
    hint = torch.zeros(height, width)  # [H, W]
    crop.image(hint)[...] = crop_hint
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
