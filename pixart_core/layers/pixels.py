"""Pixel helpers shared by the layer file formats: alpha bounds, cropping, placing pieces on the canvas, over."""

from __future__ import annotations

import numpy as np
from PIL import Image


def alpha_bounds(image: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the pixels with alpha > 0, or None for a fully transparent image."""
    return image.getchannel("A").getbbox()


def crop_to_alpha(image: Image.Image) -> tuple[Image.Image, int, int]:
    """The RGBA image cropped to its alpha bounds, with its (left, top) offset on the canvas.

    A fully transparent image becomes one transparent pixel at (0, 0): PSD and ORA layers need a size.
    """
    bounds = alpha_bounds(image)
    if bounds is None:
        return Image.new("RGBA", (1, 1), (0, 0, 0, 0)), 0, 0
    return image.crop(bounds), bounds[0], bounds[1]


def place(piece: Image.Image, left: int, top: int, width: int, height: int, opacity: float = 1.0) -> Image.Image:
    """A canvas-sized RGBA image with `piece` copied (not blended) at (left, top), clipped to the canvas.

    `opacity` (0..1) is multiplied into the alpha channel and rounded, so the layer keeps its look without a
    separate opacity setting.
    """
    canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    canvas.paste(piece.convert("RGBA"), (int(left), int(top)))  # raw copy; PIL clips negative offsets
    if opacity < 1.0:
        pixels = np.array(canvas)  # [H, W, 4] uint8
        alpha = pixels[..., 3].astype(np.float32) * max(0.0, float(opacity))  # [H, W]
        pixels[..., 3] = np.clip(np.rint(alpha), 0, 255).astype(np.uint8)
        canvas = Image.fromarray(pixels, "RGBA")
    return canvas


def alpha_over(images: list[Image.Image], width: int, height: int) -> Image.Image:
    """Straight-alpha "over" of RGBA images (bottom first) onto an opaque white backdrop, in float, then rounded.

    With an opaque backdrop the result stays opaque: out = c * a + out * (1 - a) per layer (Porter & Duff 1984,
    "Compositing Digital Images", the "over" operator). White matches psd-tools' `composite()` backdrop; a stack
    whose bottom layer is opaque does not show it.
    """
    out = np.ones((height, width, 3), dtype=np.float64)  # [H, W, 3] backdrop
    for image in images:
        pixels = np.asarray(image, dtype=np.float64) / 255.0  # [H, W, 4]
        alpha = pixels[..., 3:4]  # [H, W, 1]
        out = pixels[..., :3] * alpha + out * (1.0 - alpha)  # [H, W, 3]
    return Image.fromarray(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8), "RGB")


def visible_difference(a: Image.Image, b: Image.Image) -> float:
    """Largest absolute difference (0..255) between two RGBA images' premultiplied colour and alpha.

    Colour under alpha 0 carries no picture and is not kept by the file formats outside a layer's alpha bounds.
    """
    pa = np.asarray(a.convert("RGBA"), dtype=np.float64)  # [H, W, 4]
    pb = np.asarray(b.convert("RGBA"), dtype=np.float64)  # [H, W, 4]
    pa[..., :3] *= pa[..., 3:4] / 255.0
    pb[..., :3] *= pb[..., 3:4] / 255.0
    return float(np.abs(pa - pb).max())
