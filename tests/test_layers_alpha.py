"""A layer's alpha from its hint and the matte (`pixart_core.layers.layer_alpha.matte_in_box`)."""

from __future__ import annotations

import numpy as np
import torch

from pixart_core.layers.layer_alpha import matte_in_box


def _ring_scene(size: int = 96, box=(28, 20, 68, 60)):
    """A grey canvas with a black ring that touches all four sides of `box`, and a coarse hint a little off the
    ring's centre (as an upsampled attention map is), 0 outside the box."""
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    cx, cy, outer = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    radius = np.hypot(xx - cx, yy - cy)
    ring = np.clip(outer - radius, 0, 1) * np.clip(radius - (outer - 9), 0, 1)  # [S, S] anti-aliased coverage
    image = torch.full((3, size, size), 0.55) * torch.from_numpy(1 - ring).float()  # [3, S, S]
    hint = torch.from_numpy(np.exp(-((xx - cx + 4) ** 2 + (yy - cy + 4) ** 2) / (2 * 14.0 ** 2))).float()  # [S, S]
    hint = hint * torch.from_numpy((xx > x0) & (xx < x1) & (yy > y0) & (yy < y1)).float()
    return image, hint / hint.max(), ring, box


def test_a_subject_that_fills_its_box_is_matted_whole():
    """The background is fitted around the box, not to a border the ring itself covers."""
    image, hint, ring, box = _ring_scene()
    alpha, colour = matte_in_box(image, hint, box)
    solid = alpha.numpy() > 0.5
    truth = ring > 0.5
    iou = (solid & truth).sum() / (solid | truth).sum()
    assert iou >= 0.9, f"alpha IoU with the ring {iou:.2f}"
    outside = np.ones_like(truth)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert float(alpha.numpy()[outside].max()) == 0.0  # a layer never extends beyond its box
    assert colour.shape == image.shape
