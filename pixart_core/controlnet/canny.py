"""Canny edge maps with OpenCV (Canny, "A Computational Approach to Edge Detection", IEEE TPAMI 1986).

Like controlnet-aux's `controlnet_aux/canny/__init__.py` (what ComfyUI users of comfyui_controlnet_aux get),
`cv2.Canny` runs on the 8-bit RGB image itself: OpenCV takes, per pixel, the gradient of the channel where it is
largest, so edges between colours of equal brightness are kept. Sobel aperture 3, L1 gradient norm (OpenCV's
defaults).
"""

from __future__ import annotations

import numbers

import cv2
import numpy as np
import torch


def _check_threshold(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a number from 0 to 255, got {value!r}.")
    if not 0 <= value <= 255:
        raise ValueError(f"{name}: expected a number from 0 to 255, got {value}.")
    return float(value)


def canny_edges(images: torch.Tensor, low_threshold: float, high_threshold: float) -> torch.Tensor:
    """Canny edge maps [B, 1, H, W] with values 0 or 1 for RGB `images` [B, 3, H, W] in 0..1.

    Thresholds are on OpenCV's 8-bit gradient scale (0..255, `low_threshold <= high_threshold`); pixels above
    `high_threshold` start edges, and edges continue through pixels above `low_threshold`. The result has the
    images' float dtype and device."""
    low = _check_threshold("low_threshold", low_threshold)
    high = _check_threshold("high_threshold", high_threshold)
    if low > high:
        raise ValueError(f"low_threshold: {low_threshold} is above high_threshold {high_threshold}; "
                         "choose low_threshold <= high_threshold.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected RGB [B, 3, H, W] in 0..1, got shape {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"images: expected floating point values in 0..1, got {images.dtype}.")
    rgb8 = (images.detach().float().cpu() * 255.0).round().clamp(0, 255).to(torch.uint8)  # [B, 3, H, W]
    hwc = rgb8.permute(0, 2, 3, 1).contiguous().numpy()  # [B, H, W, 3]
    maps = np.stack([cv2.Canny(image, low, high) for image in hwc])  # [B, H, W] uint8, 0 or 255
    edges = torch.from_numpy(maps).unsqueeze(1) > 0  # [B, 1, H, W] bool
    return edges.to(device=images.device, dtype=images.dtype)  # [B, 1, H, W]
