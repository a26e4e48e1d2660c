"""Split a composite into 8-bit RGBA layers whose straight-alpha "over" gives the composite back.

Inputs are the composite C, the completed background, and per foreground layer an alpha and a straight colour
(from the matte and the amodal completion). Going bottom to top in the same float arithmetic as
`pixels.alpha_over`, each pixel's topmost layer with alpha > 0 takes the colour that un-mixes the composite over
what lies below it, F = (C - (1 - a) * below) / a; where that colour would leave 0..1 its alpha is raised to the
least value that explains C (the colour-unmixing bound), never from 0, so a layer stays inside its box. Where no
foreground has alpha the background is C itself. The re-composite then differs from C by the rounding of F only.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _least_alpha(composite: np.ndarray, below: np.ndarray) -> np.ndarray:
    """[H, W]: the least alpha with which some colour in 0..1 over `below` gives `composite` (both [H, W, 3])."""
    up = np.where(composite > below, (composite - below) / np.maximum(1.0 - below, 1e-12), 0.0)  # [H, W, 3]
    down = np.where(composite < below, (below - composite) / np.maximum(below, 1e-12), 0.0)  # [H, W, 3]
    return np.clip(np.maximum(up, down).max(axis=-1), 0.0, 1.0)  # [H, W]


def split_layers(composite: torch.Tensor, background: torch.Tensor, alphas: list[torch.Tensor],
                 colours: list[torch.Tensor]) -> list[Image.Image]:
    """PIL RGBA images, background first: composite [3, H, W] and background [3, H, W] in 0..1, alphas [H, W]
    and straight colours [3, H, W] of the foreground layers, bottom to top."""
    target = _to_u8(composite.permute(1, 2, 0).double().numpy()).astype(np.float64) / 255.0  # [H, W, 3]
    a = [_to_u8(alpha.double().numpy()) for alpha in alphas]  # [H, W] uint8 each
    covered = np.zeros(target.shape[:2], dtype=bool)  # [H, W] any foreground alpha > 0
    top = np.full(target.shape[:2], -1)  # [H, W] the topmost layer with alpha > 0
    for index, alpha in enumerate(a):
        covered |= alpha > 0
        top[alpha > 0] = index
    base = _to_u8(background.permute(1, 2, 0).double().numpy())  # [H, W, 3]
    base[~covered] = _to_u8(target[~covered])
    out = [Image.fromarray(np.dstack([base, np.full(target.shape[:2], 255, np.uint8)]), "RGBA")]
    below = base.astype(np.float64) / 255.0  # [H, W, 3], as alpha_over computes
    for index, (alpha, colour) in enumerate(zip(a, colours)):
        owner = top == index  # [H, W]
        value = alpha.astype(np.float64) / 255.0  # [H, W]
        least = np.ceil(_least_alpha(target, below) * 255.0 - 1e-9) / 255.0  # [H, W]
        value = np.where(owner, np.maximum(value, least), value)  # [H, W]
        straight = colour.permute(1, 2, 0).double().numpy().clip(0.0, 1.0)  # [H, W, 3]
        safe = np.maximum(value, 1e-12)[..., None]  # [H, W, 1]
        unmixed = (target - (1.0 - value[..., None]) * below) / safe  # [H, W, 3]
        straight = np.where(owner[..., None], unmixed, straight)  # [H, W, 3]
        rgb, alpha_u8 = _to_u8(straight), _to_u8(value)  # [H, W, 3], [H, W]
        rgb[alpha_u8 == 0] = 0
        out.append(Image.fromarray(np.dstack([rgb, alpha_u8]), "RGBA"))
        a_f = alpha_u8.astype(np.float64)[..., None] / 255.0  # [H, W, 1]
        below = rgb.astype(np.float64) / 255.0 * a_f + below * (1.0 - a_f)  # [H, W, 3]
    return out
