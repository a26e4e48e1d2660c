"""RGBA images to files and previews: atomic 8-bit PNG with text chunks, checkerboard preview, image + MASK join.

Conventions as ComfyUI core (`nodes.py` SaveImage, `comfy_extras/nodes_compositing.py` JoinImageWithAlpha): values
are quantised as uint8(clip(255 * x, 0, 255)) (truncated, not rounded), alpha is straight (not premultiplied),
the workflow travels in PNG tEXt chunks ("prompt", "workflow": JSON strings), and a MASK is 1 - alpha.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PNG_COMPRESS_LEVEL = 4  # ComfyUI SaveImage's default
CHECKER_CELL = 8  # px per checkerboard square
CHECKER_LIGHT = 0.8
CHECKER_DARK = 0.6


def _as_hwc(rgba) -> np.ndarray:
    """One RGBA image as a float array [H, W, 4] from [H, W, 4], [1, 4, H, W] or [1, H, W, 4] (tensor or array)."""
    array = rgba.detach().float().cpu().numpy() if isinstance(rgba, torch.Tensor) else np.asarray(rgba)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"rgba: a batch of {array.shape[0]} images; save one image per file (index the batch)")
        array = array[0]
        if array.shape[0] == 4:  # [4, H, W] channels first (the library's layout)
            array = np.moveaxis(array, 0, -1)
    if array.ndim != 3 or array.shape[-1] != 4 or min(array.shape[:2]) < 1:
        raise ValueError(f"rgba: expected one RGBA image [H, W, 4] or [1, 4, H, W], got shape {tuple(np.shape(rgba))}")
    return array


def to_uint8(values) -> np.ndarray:
    """0..1 floats -> uint8 as ComfyUI SaveImage: clip(255 * x, 0, 255) truncated; NaN becomes 0."""
    array = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    return np.clip(255.0 * array, 0, 255).astype(np.uint8)


def save_rgba_png(path: str | Path, rgba, text: dict[str, str] | None = None) -> Path:
    """Write `rgba` (0..1, straight alpha; [H, W, 4], [1, 4, H, W] or [1, H, W, 4]) as an 8-bit RGBA PNG.

    text: tEXt chunks, e.g. {"prompt": json.dumps(prompt), "workflow": json.dumps(workflow)} as ComfyUI embeds
    them. Atomic: written to a hidden temporary file beside `path`, then moved over it (`os.replace`); on any
    error the temporary file is removed and `path` is untouched. Returns the path written.
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from ..layers.atomic_io import write_file_atomic

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path {path}: RGBA images are saved as PNG; end the file name in .png")
    pixels = to_uint8(_as_hwc(rgba))  # [H, W, 4] uint8
    info = PngInfo()
    for key, value in (text or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"text: keys and values must be strings, got {type(key).__name__}: "
                             f"{type(value).__name__} (json.dumps objects first)")
        info.add_text(key, value)
    image = Image.fromarray(pixels)  # uint8 [H, W, 4] -> mode RGBA
    return write_file_atomic(path, lambda handle: image.save(handle, format="PNG", pnginfo=info,
                                                             compress_level=PNG_COMPRESS_LEVEL), "PNG")


def checkerboard(rgba: torch.Tensor, cell: int = CHECKER_CELL) -> torch.Tensor:
    """[B, 3, H, W] preview: rgba [B, 4, H, W] (straight alpha, 0..1) composited over a grey checkerboard."""
    if not isinstance(rgba, torch.Tensor) or rgba.ndim != 4 or rgba.shape[1] != 4:
        shape = tuple(rgba.shape) if isinstance(rgba, torch.Tensor) else type(rgba).__name__
        raise ValueError(f"rgba: expected a tensor [B, 4, H, W], got {shape}")
    if cell < 1:
        raise ValueError(f"cell: {cell} px is too small; pass 1 or more")
    height, width = rgba.shape[2:]
    rows = torch.arange(height, device=rgba.device) // cell  # [H]
    cols = torch.arange(width, device=rgba.device) // cell  # [W]
    odd = (rows[:, None] + cols[None, :]) % 2  # [H, W]
    board = torch.where(odd == 0, CHECKER_LIGHT, CHECKER_DARK).to(rgba.dtype)  # [H, W]
    colour, alpha = rgba[:, :3].clamp(0, 1), rgba[:, 3:].clamp(0, 1)  # [B, 3, H, W], [B, 1, H, W]
    return colour * alpha + board[None, None] * (1.0 - alpha)  # [B, 3, H, W]


def rgba_from(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, 3+] and MASK [B or 1, h, w] (or [h, w]; 1 = transparent, the core convention)
    -> RGBA IMAGE [B, H, W, 4] with alpha = 1 - mask, the mask bilinearly resized to the image as core
    JoinImageWithAlpha does; a mask batch of 1 serves every image."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image: expected an IMAGE tensor [B, H, W, 3], got {shape}")
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected a MASK tensor [B, H, W] or [H, W], got {shape}")
    batch, height, width = image.shape[:3]
    mask = mask.reshape(-1, *mask.shape[-2:]).to(device=image.device, dtype=image.dtype)  # [b, h, w]
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"mask: batch of {mask.shape[0]} for {batch} images; pass 1 or {batch} masks")
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(mask[:, None], size=(height, width), mode="bilinear")[:, 0]  # [b, H, W]
    alpha = (1.0 - mask).expand(batch, height, width)  # [B, H, W]
    return torch.cat([image[..., :3], alpha[..., None]], dim=-1)  # [B, H, W, 4]
