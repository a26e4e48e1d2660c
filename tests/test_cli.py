"""`python -m pixart_core`: generate writes PNGs from tiny checkpoints; make-tiny, info and the offline error."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixart_core.__main__ import main
from pixart_core.dtypes import default_dtype
from pixart_core.pipeline import PixArtPipeline

ROOT = Path(__file__).resolve().parents[1]


def test_generate_from_a_pipeline_folder_in_a_subprocess(tiny_suite, tmp_path):
    out = tmp_path / "fox.png"
    result = subprocess.run(
        [sys.executable, "-m", "pixart_core", "generate", "--model", str(tiny_suite / "pipelines" / "sigma-256"),
         "--prompt", "a fox", "--out", str(out), "--height", "256", "--width", "384", "--steps", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "PixArt-Σ 256" in result.stderr and "wrote" in result.stderr
    with Image.open(out) as image:
        assert image.size == (384, 256) and image.format == "PNG"
        written = np.asarray(image.convert("RGB"), dtype=np.int16)  # [H, W, 3]
    # the library, same model, prompt, size, steps, the CLI's default seed 0 and default dtype (bf16 on a CPU
    # with native bf16, else fp32): the same picture
    pipe = PixArtPipeline.from_pretrained(tiny_suite / "pipelines" / "sigma-256", dtype=default_dtype("cpu"))
    (reference,) = pipe("a fox", height=256, width=384, num_inference_steps=3, seed=0)
    expected = np.asarray(reference, dtype=np.int16)  # [H, W, 3]
    assert np.abs(written - expected).max() <= 1  # one 8-bit level: float rounding across processes


def test_generate_from_separate_files_with_batch_and_lcm(tiny_suite, tmp_path):
    out = tmp_path / "img.png"
    code = main(["generate", "--model", str(tiny_suite / "transformers" / "alpha-1024-ms.safetensors"),
                 "--t5", str(tiny_suite / "t5" / "t5_hf"), "--vae", str(tiny_suite / "vae" / "sd_ldm.safetensors"),
                 "--prompt", "a boat", "--out", str(out), "--height", "64", "--width", "64", "--no-binning",
                 "--lcm", "--batch", "2"])
    assert code == 0
    assert out.exists() and (tmp_path / "img_1.png").exists()


def test_image_to_image(tiny_suite, tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (300, 200), (200, 80, 40)).save(source)
    out = tmp_path / "out.png"
    code = main(["generate", "--model", str(tiny_suite / "pipelines" / "sigma-256"), "--prompt", "a fox",
                 "--out", str(out), "--height", "200", "--width", "300", "--image", str(source),
                 "--strength", "0.5", "--steps", "4"])
    assert code == 0
    with Image.open(out) as image:
        assert image.size == (300, 200)


def test_info_and_clear_errors(tiny_suite, tmp_path, capsys):
    assert main(["info", str(tiny_suite / "transformers" / "sigma-2k.pth")]) == 0
    assert "PixArt-Σ 2K" in capsys.readouterr().out
    not_a_model = tmp_path / "notes.safetensors"
    not_a_model.write_bytes(b"\x00" * 64)
    assert main(["generate", "--model", str(not_a_model), "--t5", "x", "--vae", "y", "--prompt", "a",
                 "--out", str(tmp_path / "o.png")]) == 2
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "a", "--out", "o.png"]) == 2


def test_default_model_fails_clearly_offline(tmp_path, monkeypatch, caplog):
    with socket.socket() as sock:  # a loopback port nobody listens on stands in for an unreachable hub
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("PIXART_ATELIER_HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("PIXART_ATELIER_CACHE", str(tmp_path / "cache"))
    assert main(["generate", "--prompt", "a cat", "--out", str(tmp_path / "cat.png")]) == 2
    assert "offline" in caplog.text and "--model PATH" in caplog.text
    assert not (tmp_path / "cat.png").exists()


def test_controlnet_flags(tiny_suite, tmp_path, caplog):
    from pixart_core import load_controlnet
    from pixart_core.bins import resize_and_crop
    from pixart_core.controlnet.canny import canny_edges

    photo = tmp_path / "photo.png"
    pixels = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype("uint8")  # [H, W, 3]
    Image.fromarray(pixels).save(photo)
    parts = ["--model", str(tiny_suite / "transformers" / "alpha-1024-ms.safetensors"),
             "--t5", str(tiny_suite / "t5" / "t5_hf"), "--vae", str(tiny_suite / "vae" / "sd_ldm.safetensors"),
             "--prompt", "a boat", "--height", "64", "--width", "96", "--no-binning", "--steps", "3",
             "--dtype", "fp32", "--device", "cpu", "--controlnet", str(tiny_suite / "controlnets" / "official.pth"),
             "--control-image", str(photo), "--control-strength", "0.7"]
    out = tmp_path / "canny.png"
    assert main(["generate", *parts, "--out", str(out), "--control-preprocess", "canny"]) == 0
    # the library: Canny 100/200 of the photo at the generation size, then the pipeline with that map
    pipe = PixArtPipeline.from_pretrained(tiny_suite / "transformers" / "alpha-1024-ms.safetensors",
                                          text_encoder=tiny_suite / "t5" / "t5_hf",
                                          vae=tiny_suite / "vae" / "sd_ldm.safetensors")
    rgb = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255  # [1, 3, H, W]
    edges = canny_edges(resize_and_crop(rgb, 96, 64), 100, 200)  # [1, 1, 64, 96]
    (expected,) = pipe("a boat", height=64, width=96, num_inference_steps=3, seed=0, use_resolution_binning=False,
                       control_image=edges, controlnet=load_controlnet(tiny_suite / "controlnets" / "official.pth"),
                       controlnet_conditioning_scale=0.7)
    with Image.open(out) as written:
        assert np.abs(np.asarray(written, dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max() <= 1
    assert main(["generate", *parts, "--out", str(tmp_path / "hed.png"), "--control-preprocess", "hed"]) == 2
    assert "--hed" in caplog.text
    assert main(["generate", *parts, "--out", str(tmp_path / "hed.png"), "--control-preprocess", "hed",
                 "--hed", str(tiny_suite / "hed" / "ControlNetHED.pth")]) == 0
    assert main(["generate", *parts[:-4], "--out", str(tmp_path / "x.png")]) == 2  # --controlnet alone
    assert "--control-image" in caplog.text
