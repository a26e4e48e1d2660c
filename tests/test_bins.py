"""Aspect-ratio bins and resize-back: equal to diffusers' tables, binning rule and resize_and_crop_tensor."""

from __future__ import annotations

import random

import pytest
import torch

from pixart_core import bins

diffusers_alpha = pytest.importorskip("diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha")
diffusers_sigma = pytest.importorskip("diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma")
from diffusers.image_processor import PixArtImageProcessor  # noqa: E402

DIFFUSERS_TABLES = {
    32: diffusers_alpha.ASPECT_RATIO_256_BIN,
    64: diffusers_alpha.ASPECT_RATIO_512_BIN,
    128: diffusers_alpha.ASPECT_RATIO_1024_BIN,
    256: diffusers_sigma.ASPECT_RATIO_2048_BIN,
}


@pytest.mark.parametrize("sample_size", [32, 64, 128, 256])
def test_tables_equal_diffusers(sample_size):
    ours = bins.bins_for(sample_size)
    theirs = DIFFUSERS_TABLES[sample_size]
    assert list(ours) == list(theirs)  # same keys in the same order (order decides ties)
    for key, (height, width) in ours.items():
        assert (float(height), float(width)) == tuple(theirs[key])
    assert len(ours) == (40 if sample_size == 256 else 33)


@pytest.mark.parametrize("sample_size,side", [(32, 256), (64, 512), (128, 1024), (256, 2048)])
def test_full_training_tables(sample_size, side):
    full = bins.bins_for(sample_size, full=True)
    assert len(full) == 40
    assert full["1.0"] == (side, side)
    multiple = side // 32
    for key, (height, width) in full.items():
        assert height % multiple == 0 and width % multiple == 0
        assert abs(height / width - float(key)) < 0.03, key
    # diffusers' tables are subsets of the training tables with identical sizes
    for key, hw in bins.bins_for(sample_size).items():
        assert full[key] == hw
    # spot values from the official Σ diffusion/data/datasets/utils.py
    if side == 1024:
        assert full["0.26"] == (512, 1984) and full["3.62"] == (1856, 512)
    if side == 256:
        assert full["3.88"] == (496, 128)


def test_bins_for_rejects_unknown_sample_size():
    with pytest.raises(ValueError, match="sample_size 96"):
        bins.bins_for(96)


@pytest.mark.parametrize("sample_size", [32, 64, 128, 256])
def test_closest_bin_equals_diffusers(sample_size):
    rng = random.Random(sample_size)
    sizes = [(h, w) for h in (64, 256, 512, 640, 768, 1000, 1024, 1080, 1920, 4096) for w in (64, 300, 512, 1024, 1344, 2048)]
    sizes += [(rng.randint(1, 5000), rng.randint(1, 5000)) for _ in range(400)]
    # exact midpoints between keys exercise the tie rule (first key wins)
    sizes += [(int(round(r * 1000)), 1000) for r in (0.265, 0.54, 0.965, 1.035, 2.25, 3.5)]
    table = bins.bins_for(sample_size)
    for height, width in sizes:
        expected = PixArtImageProcessor.classify_height_width_bin(height, width, ratios=DIFFUSERS_TABLES[sample_size])
        assert bins.closest_bin(height, width, table) == expected, (height, width)


def test_closest_bin_tie_goes_to_first_key():
    table = {"0.5": (1, 2), "1.5": (3, 2)}
    assert bins.closest_bin(1000, 1000, table) == (1, 2)


@pytest.mark.parametrize("height,width", [(0, 512), (512, 0), (-8, 512), (512, -1), (float("nan"), 512)])
def test_closest_bin_rejects_bad_sizes(height, width):
    with pytest.raises(ValueError, match="positive"):
        bins.closest_bin(height, width, bins.BINS_1024)


def test_closest_bin_rejects_empty_table():
    with pytest.raises(ValueError, match="non-empty"):
        bins.closest_bin(512, 512, {})


@pytest.mark.parametrize(
    "orig_hw,target_wh",
    [
        ((64, 112), (100, 60)),    # downscale, crop height
        ((48, 48), (50, 70)),      # upscale, crop width
        ((32, 80), (80, 32)),      # same size -> untouched
        ((40, 56), (33, 47)),      # odd targets
        ((96, 64), (64, 128)),     # strong aspect change
        ((24, 88), (90, 30)),
    ],
)
def test_resize_and_crop_equals_diffusers(orig_hw, target_wh):
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, *orig_hw, generator=generator)  # [B, C, H, W]
    width, height = target_wh
    ours = bins.resize_and_crop(images, width, height)
    theirs = PixArtImageProcessor.resize_and_crop_tensor(images, width, height)
    assert ours.shape == (2, 3, height, width)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-6


def test_resize_and_crop_fixes_diffusers_off_by_one():
    # 352 * (480 / 352) == 479.99999999999994 in floats: diffusers resizes to 479 and crops a 1-pixel slice.
    images = torch.rand(1, 3, 704, 352)  # [B, C, H, W]
    theirs = PixArtImageProcessor.resize_and_crop_tensor(images, 480, 704)
    ours = bins.resize_and_crop(images, 480, 704)
    assert theirs.shape[-1] != 480
    assert ours.shape == (1, 3, 704, 480)


@pytest.mark.parametrize("width,height", [(0, 64), (64, 0), (-5, 64), (64, -5), (64.5, 64)])
def test_resize_and_crop_rejects_bad_sizes(width, height):
    with pytest.raises(ValueError, match="positive integer"):
        bins.resize_and_crop(torch.rand(1, 3, 8, 8), width, height)


def test_resize_and_crop_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        bins.resize_and_crop(torch.rand(3, 8, 8), 8, 8)
    with pytest.raises(ValueError, match="empty"):
        bins.resize_and_crop(torch.rand(1, 3, 0, 8), 8, 8)
