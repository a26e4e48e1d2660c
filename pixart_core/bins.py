"""PixArt aspect-ratio bins: the (height, width) sizes each model was trained at, and resizing back.

PixArt-α/Σ train multi-scale models on 40 aspect-ratio buckets per resolution (PixArt-α arXiv:2310.00426
§2.3, "multi-scale training"); keys are height / width rounded to two decimals, values are pixel sizes.
All tables are the 1024 table scaled by side / 1024 (every 1024 size is a multiple of 64).

Two families of tables are exposed:

* ``bins_for(sample_size)`` returns the tables diffusers bins with (``ASPECT_RATIO_{256,512,1024}_BIN`` =
  the official ``_TEST`` tables, 33 keys; ``ASPECT_RATIO_2048_BIN``, all 40 keys). Use these for parity with
  ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline(use_resolution_binning=True)``.
* ``bins_for(sample_size, full=True)`` returns the full 40-key training tables (``ASPECT_RATIO_{256,...,2048}``
  in the official ``diffusion/data/datasets/utils.py``), used by the official Σ inference script.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

# The official 1024 training table, key = h / w, value = (height, width) in pixels, in the official key order.
_TRAINING_1024: tuple[tuple[str, int, int], ...] = (
    ("0.25", 512, 2048), ("0.26", 512, 1984), ("0.27", 512, 1920), ("0.28", 512, 1856),
    ("0.32", 576, 1792), ("0.33", 576, 1728), ("0.35", 576, 1664), ("0.4", 640, 1600),
    ("0.42", 640, 1536), ("0.48", 704, 1472), ("0.5", 704, 1408), ("0.52", 704, 1344),
    ("0.57", 768, 1344), ("0.6", 768, 1280), ("0.68", 832, 1216), ("0.72", 832, 1152),
    ("0.78", 896, 1152), ("0.82", 896, 1088), ("0.88", 960, 1088), ("0.94", 960, 1024),
    ("1.0", 1024, 1024), ("1.07", 1024, 960), ("1.13", 1088, 960), ("1.21", 1088, 896),
    ("1.29", 1152, 896), ("1.38", 1152, 832), ("1.46", 1216, 832), ("1.67", 1280, 768),
    ("1.75", 1344, 768), ("2.0", 1408, 704), ("2.09", 1472, 704), ("2.4", 1536, 640),
    ("2.5", 1600, 640), ("2.89", 1664, 576), ("3.0", 1728, 576), ("3.11", 1792, 576),
    ("3.62", 1856, 512), ("3.75", 1920, 512), ("3.88", 1984, 512), ("4.0", 2048, 512),
)

# Keys the official `_TEST` tables (= diffusers' 256/512/1024 bins) leave out.
_TEST_DROPPED_KEYS = frozenset({"0.26", "0.27", "2.89", "3.11", "3.62", "3.75", "3.88"})


def _scaled_table(side: int, keep_all: bool) -> dict[str, tuple[int, int]]:
    """The 1024 table scaled to `side` (256, 512, 1024, 2048), optionally without the `_TEST` drops."""
    table = {}
    for key, height, width in _TRAINING_1024:
        if keep_all or key not in _TEST_DROPPED_KEYS:
            table[key] = (height * side // 1024, width * side // 1024)
    return table


# Full official training tables (40 keys each).
TRAINING_BINS_256 = _scaled_table(256, keep_all=True)
TRAINING_BINS_512 = _scaled_table(512, keep_all=True)
TRAINING_BINS_1024 = _scaled_table(1024, keep_all=True)
TRAINING_BINS_2048 = _scaled_table(2048, keep_all=True)

# The tables diffusers bins with: `_TEST` (33 keys) for 256/512/1024, the full table for 2048.
BINS_256 = _scaled_table(256, keep_all=False)
BINS_512 = _scaled_table(512, keep_all=False)
BINS_1024 = _scaled_table(1024, keep_all=False)
BINS_2048 = TRAINING_BINS_2048

# Latent side at the training resolution (transformer `sample_size` = image size // 8) -> tables.
_BINS_BY_SAMPLE_SIZE = {32: BINS_256, 64: BINS_512, 128: BINS_1024, 256: BINS_2048}
_TRAINING_BINS_BY_SAMPLE_SIZE = {
    32: TRAINING_BINS_256, 64: TRAINING_BINS_512, 128: TRAINING_BINS_1024, 256: TRAINING_BINS_2048,
}


def bins_for(sample_size: int, *, full: bool = False) -> dict[str, tuple[int, int]]:
    """The aspect-ratio table for a transformer whose latent side is `sample_size` (32, 64, 128, 256).

    `full=False` gives diffusers' binning table; `full=True` the 40-key official training table.
    Returns a new dict {h/w key: (height, width)} in ascending key order.
    """
    tables = _TRAINING_BINS_BY_SAMPLE_SIZE if full else _BINS_BY_SAMPLE_SIZE
    if sample_size not in tables:
        raise ValueError(
            f"no PixArt aspect-ratio bins for sample_size {sample_size!r}: PixArt models use latent sample sizes "
            f"32 (256 px), 64 (512 px), 128 (1024 px) or 256 (2048 px)"
        )
    return dict(tables[sample_size])


def _check_size(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number of pixels, got {value!r}")


def closest_bin(height: int, width: int, bins: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """The (height, width) of the bin whose key is nearest to height / width.

    Same rule as diffusers' `classify_height_width_bin`: minimise |float(key) - h/w|; on a tie the key
    that comes first in `bins` wins (Python's `min`).
    """
    _check_size("height", height)
    _check_size("width", width)
    if not bins:
        raise ValueError("closest_bin needs a non-empty table of aspect-ratio bins")
    ratio = float(height / width)
    best_key = min(bins, key=lambda key: abs(float(key) - ratio))
    bin_height, bin_width = bins[best_key]
    return int(bin_height), int(bin_width)


def resize_and_crop(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Scale [B, C, H, W] images to cover (height, width), then centre-crop to exactly that size.

    The scale is max(height / H, width / W), resized bilinearly (align_corners=False), as diffusers'
    `PixArtImageProcessor.resize_and_crop_tensor`. Where float rounding would make a resized side one
    pixel short of the target (diffusers then returns a wrongly sized crop) the side is set to the target.
    """
    if images.ndim != 4:
        raise ValueError(f"resize_and_crop expects images of shape [B, C, H, W], got shape {tuple(images.shape)}")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}")
    width, height = int(width), int(height)
    orig_height, orig_width = images.shape[2], images.shape[3]
    if orig_height == 0 or orig_width == 0:
        raise ValueError(f"cannot resize empty images of shape {tuple(images.shape)}")
    if (orig_height, orig_width) == (height, width):
        return images
    scale = max(height / orig_height, width / orig_width)
    resized_height = max(int(orig_height * scale), height)
    resized_width = max(int(orig_width * scale), width)
    resized = F.interpolate(images, size=(resized_height, resized_width), mode="bilinear", align_corners=False)  # [B, C, rH, rW]
    top = (resized_height - height) // 2
    left = (resized_width - width) // 2
    return resized[:, :, top : top + height, left : left + width]  # [B, C, height, width]
