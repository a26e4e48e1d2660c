"""Hostile inputs, media part (issue 12): devices, sizes, input images, prompt bytes and node tensors are refused
(or converted) with a message naming the argument or file, before anything is loaded, lost or left behind."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixart_core import memory
from pixart_core.__main__ import main
from pixart_core.image_io import read_rgb
from pixart_core.pipeline import PixArtPipeline


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden temp files included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FakePipe:
    """Stands in for a loaded pipeline: records its call and returns one small image per batch item."""

    transformer = None

    def __init__(self):
        self.calls = []

    def generation_size(self, height, width, binning):
        return height, width

    def __call__(self, prompt, **kwargs):
        self.calls.append(dict(kwargs, prompt=prompt))
        return [Image.new("RGB", (16, 8), (200, 40, 10)) for _ in range(kwargs["num_images_per_prompt"])]


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if generate loads a model: the refusals below must come first."""

    def refuse(cls, *args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(PixArtPipeline, "from_pretrained", classmethod(refuse))


@pytest.fixture
def fake_pipe(monkeypatch):
    pipe = FakePipe()
    monkeypatch.setattr(PixArtPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipe))
    return pipe


def generate(tmp_path: Path, *extra: str) -> int:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"model weights")
    return main(["generate", "--model", str(model), "--prompt", "a fox", "--out", str(tmp_path / "out.png"), *extra])


# --- 1. --device that does not exist ------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "cdua", "mps"])
def test_a_missing_device_is_refused_before_loading_listing_the_ones_there(tmp_path, no_loading, caplog,
                                                                            monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    (tmp_path / "model.safetensors").write_bytes(b"model weights")
    before = snapshot(tmp_path)
    assert generate(tmp_path, "--device", device) == 2
    assert f"--device {device}: not available on this machine; pass one of cpu" in caplog.text
    assert snapshot(tmp_path) == before


def test_present_devices_are_listed(monkeypatch):
    from pixart_core.devices import available_devices, check_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert available_devices()[:3] == ["cpu", "cuda:0", "cuda:1"]
    assert check_device("cuda:1") == "cuda:1" and check_device("cuda") == "cuda" and check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="--device cuda:2: .* cpu, cuda:0, cuda:1"):
        check_device("cuda:2")


# --- 2. a size the machine cannot hold ---------------------------------------------------------------------


def test_the_estimate_grows_with_size_and_batch():
    small = memory.estimate_bytes(1024, 1024, 1024, 1024, 1)
    assert 1 * memory.GIB < small < 4 * memory.GIB  # a 1024 image fits a small machine
    assert memory.estimate_bytes(1024, 1024, 1024, 1024, 4) > 3 * small
    # binned: sampled at a bin, but the output at the requested size is still allocated
    assert memory.estimate_bytes(1024, 1024, 100000, 100000, 1) > 200 * memory.GIB
    assert memory.estimate_bytes(1024, 1024, 1024, 1024, 1, decode=False) < small


@pytest.mark.parametrize("binning", [True, False])
def test_the_pipeline_refuses_a_huge_size_before_allocating(tiny_suite, monkeypatch, binning):
    pipe = PixArtPipeline.from_pretrained(tiny_suite / "pipelines" / "sigma-256")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 16 * memory.GIB)
    monkeypatch.setattr(torch, "randn", lambda *a, **k: pytest.fail("allocated latents before refusing"))
    start = time.monotonic()
    expected = (r"--height/--width 100000x100000.* needs about [\d.]+ GiB .*this machine has 16.0 GiB" if binning
                else r"100000 wide x 100000 high .* is larger than the largest trained PixArt size")  # sampled as is
    with pytest.raises(ValueError, match=expected):
        pipe("a fox", height=100000, width=100000, use_resolution_binning=binning)
    assert time.monotonic() - start < 5


def test_a_huge_size_on_the_cli_exits_2_naming_height_width(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * memory.GIB)

    class SizedPipe(FakePipe):
        def __call__(self, prompt, **kwargs):
            memory.check_fits(1024, 1024, kwargs["height"], kwargs["width"], 1, "cpu")
            return super().__call__(prompt, **kwargs)

    monkeypatch.setattr(PixArtPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: SizedPipe()))
    assert generate(tmp_path, "--height", "100000", "--width", "100000") == 2
    assert "--height/--width 100000x100000" in caplog.text and "this machine has 8.0 GiB" in caplog.text
    assert not (tmp_path / "out.png").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


# --- 3. input images ---------------------------------------------------------------------------------------


def _png_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("flag", ["--image", "--control-image"])
@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "folder"])
def test_broken_input_images_are_named_and_refused_before_loading(tmp_path, no_loading, caplog, flag, kind):
    bad = tmp_path / "input.png"
    if kind == "truncated":
        bad.write_bytes(_png_bytes(tmp_path)[:60])
    elif kind == "garbage":
        bad.write_bytes(b"\x00garbage, not an image" * 10)
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        bad.mkdir()
    extra = ["--controlnet", str(tmp_path / "model.safetensors")] if flag == "--control-image" else []
    (tmp_path / "model.safetensors").write_bytes(b"model weights")
    before = snapshot(tmp_path)
    assert generate(tmp_path, flag, str(bad), *extra) == 2
    assert f"{flag} {bad}:" in caplog.text
    assert snapshot(tmp_path) == before


def test_high_bit_depth_and_palette_images_keep_their_tones(tmp_path):
    ramp16 = (np.arange(64, dtype=np.uint16)[None].repeat(8, 0) * 1000)  # [8, 64] up to 63000
    Image.fromarray(ramp16).save(tmp_path / "gray16.png")  # a 16-bit grayscale PNG
    rgb = read_rgb(tmp_path / "gray16.png", "--image")  # [3, 8, 64]
    assert rgb.shape == (3, 8, 64) and rgb.dtype == torch.float32
    torch.testing.assert_close(rgb[0, 0], torch.from_numpy(ramp16[0] / 65535.0).float(), atol=1e-4, rtol=0)
    assert float((rgb > 0.99).float().mean()) < 0.05  # no longer 99.6 % white

    ramp_f = np.linspace(0, 1, 64, dtype=np.float32)[None].repeat(8, 0)  # [8, 64]
    Image.fromarray(ramp_f, mode="F").save(tmp_path / "float.tiff")
    torch.testing.assert_close(read_rgb(tmp_path / "float.tiff", "--image")[1, 0], torch.from_numpy(ramp_f[0]))

    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "palette.png")
    rgb = read_rgb(tmp_path / "palette.png", "--control-image")
    assert rgb[:, 1, 1].tolist() == [1.0, 0.0, 0.0] and rgb[:, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_a_16_bit_image_reaches_the_pipeline_with_its_tones(tmp_path, fake_pipe):
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "mid.png")
    assert generate(tmp_path, "--image", str(tmp_path / "mid.png")) == 0
    image = fake_pipe.calls[0]["image"]  # [1, 3, 8, 8]
    assert image.shape == (1, 3, 8, 8) and abs(float(image.mean()) - 0.5) < 0.01


# --- 4. prompt bytes that are not UTF-8 --------------------------------------------------------------------


def test_non_utf8_prompt_bytes_are_replaced_with_a_warning(tmp_path, fake_pipe, caplog):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"model weights")
    code = main(["generate", "--model", str(model), "--prompt", "a fox \udcff", "--negative", "blur\udcfe",
                 "--out", str(tmp_path / "out.png")])
    assert code == 0
    assert fake_pipe.calls[0]["prompt"] == "a fox \ufffd"
    assert fake_pipe.calls[0]["negative_prompt"] == "blur\ufffd"
    assert "--prompt: bytes that are not UTF-8 were replaced" in caplog.text
    assert "--negative: bytes that are not UTF-8 were replaced" in caplog.text
    assert (tmp_path / "out.png").is_file()


# --- 5. node tensors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("samples, message", [
    (torch.zeros(4, 8, 8), "latent: expected latents"),
    (torch.zeros(0, 4, 8, 8), "latent: the latent batch is empty"),
    (torch.full((1, 4, 8, 8), float("nan")), "latent: the latent holds NaN"),
])
def test_the_sampler_and_vae_decode_refuse_bad_latents(nodes, sigma, samples, message):
    model, _, positive, negative = sigma
    with pytest.raises(ValueError, match=message):
        nodes["AtelierSampler"]().generate(model, positive, negative, 0, 2, 4.5, "dpmpp_2m", 64, 64, 1,
                                           latent={"samples": samples}, denoise=0.5)
    with pytest.raises(ValueError, match=message):
        nodes["AtelierVAEDecode"]().decode({"samples": samples}, None)


@pytest.mark.parametrize("image, message", [
    (torch.full((1, 32, 32, 3), float("nan")), "image: the image holds NaN"),
    (torch.zeros(0, 32, 32, 3), "image: expected images"),
    (torch.zeros(32, 32, 3), "image: expected images"),
])
def test_vae_encode_refuses_bad_images(nodes, image, message):
    with pytest.raises(ValueError, match=message):
        nodes["AtelierVAEEncode"]().encode(image, None)


def test_conditionings_that_do_not_divide_the_batch_are_named(nodes, sigma):
    model, t5, positive, negative = sigma
    two, _ = nodes["AtelierT5TextEncode"]().encode(t5, model, "a fox", "")
    two = type(two)(two.hidden.repeat(2, 1, 1), two.mask.repeat(2, 1), ["a", "b"])
    with pytest.raises(ValueError, match="negative: a conditioning of 2 prompts cannot fill a batch of 3"):
        nodes["AtelierSampler"]().generate(model, positive, two, 0, 2, 4.5, "dpmpp_2m", 64, 64, 3)
    with pytest.raises(ValueError, match="positive: a conditioning of 2 prompts cannot fill a batch of 1"):
        nodes["AtelierSampler"]().generate(model, two, negative, 0, 2, 4.5, "dpmpp_2m", 64, 64, 1)


# --- 6. the sampler node's largest size --------------------------------------------------------------------


def test_the_largest_node_area_is_refused_at_once_when_it_cannot_fit(nodes, sigma, monkeypatch):
    model, _, positive, negative = sigma
    node_memory = sys.modules[type(model).__module__.rsplit(".", 2)[0] + ".pixart_core.memory"]
    monkeypatch.setattr(node_memory, "available_bytes", lambda device: memory.GIB // 100)  # the tiny DiT is narrow
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"width/height 2048x2048 with batch 1 needs about [\d.]+ GiB"):
        nodes["AtelierSampler"]().generate(model, positive, negative, 0, 2, 4.5, "dpmpp_2m", 2048, 2048, 1)
    assert time.monotonic() - start < 2
