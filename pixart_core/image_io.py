"""Reading input images (--image, --control-image) into RGB tensors, with one-line errors naming the flag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def read_rgb(path: str | Path, argument: str) -> torch.Tensor:
    """An image file -> float32 [3, H, W] in 0..1, tones kept for 16-bit (I;16, I), 32-bit float (F) and palette
    (P) images; empty, truncated, garbage files and folders raise ValueError naming `argument`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{argument} {path}: is a folder; pass an image file")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{argument} {path}: is an empty file; pass an image file")
    try:
        with Image.open(path) as image:
            image.load()
            rgb = pil_to_rgb_array(image)  # [H, W, 3] in 0..1
    except UnidentifiedImageError:
        raise ValueError(f"{argument} {path}: not an image PIL can read; pass a PNG, JPEG or WebP file") from None
    except (OSError, SyntaxError) as err:  # truncated data ("image file is truncated"), broken chunks
        raise ValueError(f"{argument} {path}: damaged image ({err}); pass a complete image file") from None
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # [3, H, W]


def pil_to_rgb_array(image) -> np.ndarray:
    """A PIL image -> float32 [H, W, 3] in 0..1; high-bit-depth grayscale is scaled by its own range."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray = np.asarray(image, dtype=np.float32) / 65535.0  # [H, W]
    elif image.mode == "I":  # 32-bit integer; PNG loads 16-bit grayscale this way
        values = np.asarray(image, dtype=np.float64)
        gray = (values / (65535.0 if values.max(initial=0) <= 65535 else values.max())).astype(np.float32)
    elif image.mode == "F":  # 32-bit float: 0..1 as given, otherwise its own range
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
        gray = values if low >= 0.0 and high <= 1.0 else (values - low) / max(high - low, 1e-12)
    else:  # P, L, LA, RGBA, CMYK, ...: PIL's own conversion keeps 8-bit tones
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # [H, W, 3]
    return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)  # [H, W, 3]

