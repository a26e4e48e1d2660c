"""A layer's alpha: the cross-attention of its caption's words, kept inside its box, refined by the matte.

The hint is the captured attention (`pixart_core.pixart.capture`) of the layer's content words (Alfie's choice
of subject tokens, arXiv 2408.14826: no stop words, no generic words), upsampled to pixels, cut to the box and
normalised there so its core reaches 1; `pixart_core.rgba.matte.matte` then solves alpha and straight colour on
the box's pixels with the background fitted to the box's border. Outside the box alpha is exactly 0.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rgba.alfie import HINT_GAIN, content_word_positions
from .latent_regions import box_mask

log = logging.getLogger(__name__)

MIN_MATTE_SIDE = 8  # the matte's smallest image side; smaller boxes take the hint as alpha
MIN_MATTE_SHARE = 0.1  # a matte holding less than this share of the hint's core falls back to the hint
HINT_EDGES = (0.3, 0.7)  # the hint's levels mapped to alpha 0 and 1 when it serves as alpha
MATTE_MARGIN = 0.15  # of the box's longer side, at least MIN_MARGIN px: context the matte sees around the box
MIN_MARGIN = 4


def content_positions(tokenizer, prompt: str) -> list[int]:
    """Caption positions (within the prompt's own tokens, lower-cased and stripped as the pipeline encodes) of
    its content words, without their punctuation; every token but `</s>` when no content word is left or the
    tokenizer merged words."""
    text = prompt.lower().strip()
    full = tokenizer.encode(text)[:-1]  # pieces without </s>
    return content_word_positions(tokenizer, text, full) or list(range(max(1, len(full))))


def attention_hint(attention: Tensor, grid_hw: tuple[int, int], columns: list[int], box, size: tuple[int, int],
                   gain: float = HINT_GAIN) -> Tensor:
    """[H, W] float32 in 0..1: the mean attention [N, L] over caption `columns`, bicubic to `size` (H, W), zero
    outside the pixel box, min-max normalised inside it and scaled by `gain` (clipped), so the core reaches 1."""
    height, width = size
    length = attention.shape[-1]
    columns = [c for c in columns if 0 <= c < length] or [length - 1]
    grid = attention[:, columns].float().mean(dim=-1).reshape(1, 1, *grid_hw)  # [1, 1, gh, gw]
    hint = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)[0, 0]  # [H, W]
    inside = box_mask(box, height, width) > 0  # [H, W]
    if not bool(inside.any()):
        return torch.zeros(height, width)
    values = hint[inside]
    low, high = values.min(), values.max()
    hint = ((hint - low) / (high - low).clamp_min(1e-12) * gain).clamp(0.0, 1.0)  # [H, W]
    return torch.where(inside, hint, torch.zeros_like(hint))  # [H, W]


def pixel_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) integer pixels covering the box, clipped to the canvas."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (max(0, math.floor(x0)), max(0, math.floor(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1)))


def hint_alpha(hint: Tensor) -> Tensor:
    """Alpha [...] from a hint alone: a smoothstep between the HINT_EDGES levels."""
    low, high = HINT_EDGES
    t = ((hint - low) / (high - low)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def matte_in_box(image: Tensor, hint: Tensor, box) -> tuple[Tensor, Tensor]:
    """alpha [H, W] and straight colour [3, H, W] of the subject in the pixel box of image [3, H, W] (0..1) with
    hint [H, W]; alpha is 0 outside the box, colour there is the image's. The matte works on the box grown by a
    margin, so the border it fits the background to lies around the box rather than on a subject that fills
    it. Where the matte finds (almost) nothing that the hint marks (no background-like border to separate
    from), the hint itself is the alpha."""
    from ..rgba.matte import matte

    _, height, width = image.shape
    x0, y0, x1, y1 = pixel_box(box, height, width)
    alpha = torch.zeros(height, width)  # [H, W]
    colour = image.clone()  # [3, H, W]
    crop_hint = hint[y0:y1, x0:x1]  # [h, w]
    if min(crop_hint.shape) < MIN_MATTE_SIDE or float(crop_hint.max()) <= 0.0:
        alpha[y0:y1, x0:x1] = hint_alpha(crop_hint)
        return alpha, colour
    margin = max(MIN_MARGIN, round(MATTE_MARGIN * max(x1 - x0, y1 - y0)))
    gx0, gy0, gx1, gy1 = max(0, x0 - margin), max(0, y0 - margin), min(width, x1 + margin), min(height, y1 + margin)
    grown_hint = torch.zeros(gy1 - gy0, gx1 - gx0)  # [gh, gw] the hint, 0 outside the box
    inner = (slice(y0 - gy0, y1 - gy0), slice(x0 - gx0, x1 - gx0))
    grown_hint[inner] = crop_hint
    grown_alpha, grown_colour = matte(image[None, :, gy0:gy1, gx0:gx1], grown_hint[None, None])  # [1, 1, gh, gw]
    crop_alpha, crop_colour = grown_alpha[0, 0][inner], grown_colour[0][(slice(None), *inner)]  # [h, w], [3, h, w]
    core = float((crop_hint >= HINT_EDGES[1]).sum())
    if float(crop_alpha.sum()) < MIN_MATTE_SHARE * core:
        log.info("matte: the box %s has no separable subject; its attention serves as alpha", list(box))
        alpha[y0:y1, x0:x1] = hint_alpha(crop_hint)
        return alpha, colour
    alpha[y0:y1, x0:x1] = crop_alpha
    colour[:, y0:y1, x0:x1] = crop_colour
    return alpha, colour
