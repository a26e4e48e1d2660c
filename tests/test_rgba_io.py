"""RGBA file helpers (`pixart_core.rgba.rgba_io`): atomic PNG with text chunks, checkerboard, image + MASK join."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pixart_core.layers import atomic_io
from pixart_core.rgba import rgba_io
from pixart_core.rgba.rgba_io import checkerboard, rgba_from, save_rgba_png, to_uint8


def _rgba(height=24, width=40, seed=0) -> torch.Tensor:
    return torch.rand(1, 4, height, width, generator=torch.Generator().manual_seed(seed))  # [1, 4, H, W]


def test_png_round_trip_keeps_pixels_and_text(tmp_path):
    rgba = _rgba()
    text = {"prompt": json.dumps({"1": {"class_type": "X"}}), "workflow": json.dumps({"nodes": []})}
    path = save_rgba_png(tmp_path / "sticker.png", rgba, text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sticker.png"]  # no temporary file left
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGBA" and image.size == (40, 24)
        assert image.text == text
        read = np.asarray(image)  # [H, W, 4]
    expected = np.clip(255.0 * rgba[0].permute(1, 2, 0).numpy(), 0, 255).astype(np.uint8)  # ComfyUI SaveImage
    assert np.array_equal(read, expected)


def test_layouts_agree_and_values_are_clipped(tmp_path):
    rgba = _rgba(8, 6) * 1.4 - 0.2  # out of 0..1 on purpose
    channels_last = rgba[0].permute(1, 2, 0)  # [H, W, 4]
    layouts = (rgba, channels_last, channels_last[None], channels_last.numpy())
    paths = [save_rgba_png(tmp_path / f"{i}.png", x) for i, x in enumerate(layouts)]
    arrays = [np.asarray(Image.open(p)) for p in paths]
    assert all(np.array_equal(arrays[0], a) for a in arrays[1:])
    assert arrays[0].min() == 0 and arrays[0].max() == 255
    assert np.array_equal(to_uint8([np.nan, 0.5, 2.0]), np.array([0, 127, 255], dtype=np.uint8))


def test_overwrite_is_atomic_and_failures_leave_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_rgba_png(path, _rgba(seed=1))
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_io.os, "replace", broken_replace)  # the shared atomic writer
    with pytest.raises(OSError, match="out.png: could not write the PNG .*No space left"):
        save_rgba_png(path, _rgba(seed=2))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    monkeypatch.undo()
    save_rgba_png(path, _rgba(seed=2))
    assert path.read_bytes() != before
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as a plain open() would create it


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_bad_inputs_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"x\.jpg: RGBA images are saved as PNG"):
        save_rgba_png(tmp_path / "x.jpg", _rgba())
    with pytest.raises(ValueError, match="batch of 2 images; save one image per file"):
        save_rgba_png(tmp_path / "x.png", torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"rgba: expected one RGBA image"):
        save_rgba_png(tmp_path / "x.png", torch.rand(8, 8, 3))
    with pytest.raises(ValueError, match="text: keys and values must be strings"):
        save_rgba_png(tmp_path / "x.png", _rgba(), {"prompt": {"a": 1}})
    with pytest.raises(OSError, match="could not write the PNG"):
        save_rgba_png(tmp_path / "missing" / "x.png", _rgba())
    assert not (tmp_path / "x.png").exists()


def test_checkerboard_composites_over_two_greys():
    rgba = torch.zeros(2, 4, 16, 24)  # fully transparent
    rgba[1, :3] = torch.tensor([0.2, 0.4, 0.6])[:, None, None]
    rgba[1, 3] = 1.0  # fully opaque
    preview = checkerboard(rgba, cell=8)
    assert preview.shape == (2, 3, 16, 24)
    assert sorted(preview[0].unique().tolist()) == pytest.approx([rgba_io.CHECKER_DARK, rgba_io.CHECKER_LIGHT])
    assert preview[0, :, 0, 0].tolist() == pytest.approx([rgba_io.CHECKER_LIGHT] * 3)
    assert preview[0, :, 0, 8].tolist() == pytest.approx([rgba_io.CHECKER_DARK] * 3)
    assert torch.allclose(preview[1], rgba[1, :3])
    with pytest.raises(ValueError, match=r"rgba: expected a tensor \[B, 4, H, W\]"):
        checkerboard(torch.zeros(1, 3, 4, 4))


def test_rgba_from_uses_the_core_mask_convention():
    image = torch.rand(2, 6, 10, 3)  # IMAGE [B, H, W, 3]
    mask = torch.zeros(1, 6, 10)
    mask[:, :, :5] = 1.0  # left half transparent
    rgba = rgba_from(image, mask)
    assert rgba.shape == (2, 6, 10, 4)
    assert torch.equal(rgba[..., :3], image)
    assert torch.equal(rgba[..., 3], (1.0 - mask).expand(2, 6, 10))
    resized = rgba_from(image, torch.full((3, 5), 0.25))  # [H, W] at another size: resized, shared
    assert torch.allclose(resized[..., 3], torch.full((2, 6, 10), 0.75))
    with pytest.raises(ValueError, match="mask: batch of 3 for 2 images"):
        rgba_from(image, torch.zeros(3, 6, 10))
    with pytest.raises(ValueError, match=r"image: expected an IMAGE tensor"):
        rgba_from(torch.zeros(2, 3, 6, 10)[..., :2], mask)
