"""Latent-grid geometry of layered generation: token-aligned crops around pixel boxes, masks brought from pixels
to the latent grid, and a push-pull fill of a latent's hole from its known surroundings."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LATENT_SCALE = 8  # VAE downscale: pixels per latent cell


@dataclass(frozen=True)
class Crop:
    """A token-aligned rectangle of the canvas, in latent cells (top, left, bottom, right; end-exclusive)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def pixels(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in canvas pixels."""
        s = LATENT_SCALE
        return self.left * s, self.top * s, self.right * s, self.bottom * s

    def latent(self, tensor: Tensor) -> Tensor:
        """The crop of a latent-grid tensor [..., h, w]."""
        return tensor[..., self.top:self.bottom, self.left:self.right]

    def image(self, tensor: Tensor) -> Tensor:
        """The crop of a pixel tensor [..., H, W]."""
        x0, y0, x1, y1 = self.pixels
        return tensor[..., y0:y1, x0:x1]

    def tokens(self, patch: int) -> int:
        return ((self.bottom - self.top) // patch) * ((self.right - self.left) // patch)


def box_crop(box, latent_hw: tuple[int, int], patch: int, margin_tokens: int = 1) -> Crop:
    """The token-aligned crop covering the pixel box (x0, y0, x1, y1) plus `margin_tokens` tokens each side,
    clipped to the latent grid (h, w), both multiples of `patch`."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cell = LATENT_SCALE * patch  # pixels per token
    height, width = latent_hw[0] // patch, latent_hw[1] // patch  # the token grid
    top = max(0, math.floor(y0 / cell) - margin_tokens)
    left = max(0, math.floor(x0 / cell) - margin_tokens)
    bottom = min(height, max(top + 1, math.ceil(y1 / cell) + margin_tokens))
    right = min(width, max(left + 1, math.ceil(x1 / cell) + margin_tokens))
    return Crop(top * patch, left * patch, bottom * patch, right * patch)


def mask_crop(mask: Tensor, patch: int, margin_tokens: int = 1) -> Crop | None:
    """The token-aligned crop around the nonzero cells of a latent mask [1, 1, h, w] (None when empty)."""
    rows = torch.nonzero(mask[0, 0].amax(dim=1) > 0)
    cols = torch.nonzero(mask[0, 0].amax(dim=0) > 0)
    if len(rows) == 0:
        return None
    s = LATENT_SCALE
    box = (int(cols[0]) * s, int(rows[0]) * s, (int(cols[-1]) + 1) * s, (int(rows[-1]) + 1) * s)
    return box_crop(box, tuple(mask.shape[-2:]), patch, margin_tokens)


def box_mask(box, height: int, width: int) -> Tensor:
    """[H, W] float32: 1 on the pixels the box (x0, y0, x1, y1) covers (rounded outwards), 0 elsewhere."""
    x0, y0, x1, y1 = (float(v) for v in box)
    mask = torch.zeros(height, width)  # [H, W]
    mask[max(0, math.floor(y0)):min(height, math.ceil(y1)), max(0, math.floor(x0)):min(width, math.ceil(x1))] = 1
    return mask


def latent_mask(pixels: Tensor, dilate: int = 1) -> Tensor:
    """[1, 1, h, w] float32: latent cells holding any nonzero pixel of pixels [H, W], dilated by `dilate` cells."""
    mask = F.max_pool2d((pixels > 0).float()[None, None], LATENT_SCALE, ceil_mode=True)  # [1, 1, h, w]
    if dilate > 0:
        mask = F.max_pool2d(mask, 2 * dilate + 1, stride=1, padding=dilate)  # [1, 1, h, w]
    return mask


def fill_hole(latent: Tensor, hole: Tensor) -> Tensor:
    """latent [B, C, h, w] with the cells where hole [1, 1, h, w] is 1 replaced by a smooth fill of the known
    cells (push-pull: masked means down a 2x pyramid, then back up, each level keeping what it knows)."""
    known = (hole < 0.5).to(latent.dtype)  # [1, 1, h, w]
    if not bool(known.any()):
        return torch.zeros_like(latent)
    values, weights = [latent * known], [known]
    while max(values[-1].shape[-2:]) > 1:
        kernel = tuple(2 if side > 1 else 1 for side in values[-1].shape[-2:])
        value = F.avg_pool2d(values[-1], kernel, ceil_mode=True)  # [B, C, h', w']
        weight = F.avg_pool2d(weights[-1], kernel, ceil_mode=True)  # [1, 1, h', w']
        values.append(value)
        weights.append(weight)
    filled = values[-1] / weights[-1].clamp_min(1e-8)  # [B, C, 1, 1] coarsest
    for value, weight in zip(reversed(values[:-1]), reversed(weights[:-1])):
        up = F.interpolate(filled, size=value.shape[-2:], mode="bilinear", align_corners=False)  # [B, C, h', w']
        mean = value / weight.clamp_min(1e-8)  # [B, C, h', w']
        filled = torch.where(weight > 0, mean * weight + up * (1 - weight), up)  # [B, C, h', w']
    return torch.where(hole >= 0.5, filled, latent)  # [B, C, h, w]
