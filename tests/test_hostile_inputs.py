"""Hostile inputs (issue 12): each is refused with a message naming the flag or file, and nothing is lost or left."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from test_hostile_files import with_file_modes_enforced

from pixart_core.__main__ import main
from pixart_core.limits import MAX_SAMPLED_AREA, MAX_SIDE, check_sampled_size
from pixart_core.pipeline import PixArtPipeline
from pixart_core.sampling import MAX_STEPS, SAMPLERS, sample


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden temp files included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FakePipe:
    """Stands in for a loaded pipeline: returns small images (or raises) without any model."""

    transformer = None

    def __init__(self, fail: BaseException | None = None):
        self.fail = fail
        self.calls = []

    def generation_size(self, height, width, binning):
        return height, width

    def __call__(self, prompt, **kwargs):
        self.calls.append(kwargs)
        if self.fail is not None:
            raise self.fail
        return [Image.new("RGB", (16, 8), (200, 40 * i, 10)) for i in range(kwargs["num_images_per_prompt"])]


@pytest.fixture
def fake_pipe(monkeypatch):
    pipe = FakePipe()
    monkeypatch.setattr(PixArtPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipe))
    return pipe


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if generate loads a model: the refusals below must come first."""

    def refuse(cls, *args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(PixArtPipeline, "from_pretrained", classmethod(refuse))


@pytest.fixture(autouse=True)
def model_file(tmp_path) -> Path:
    """The --model of `generate`: a file the refusals must leave as it was."""
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"model weights")
    return model


def generate(tmp_path: Path, out, *extra: str) -> int:
    model = tmp_path / "model.safetensors"
    return main(["generate", "--model", str(model), "--prompt", "a fox", "--out", str(out), *extra])


# --- 1. --out naming an input ----------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--model", "--t5", "--vae", "--image", "--control-image", "--hed"])
def test_out_naming_an_input_is_refused_before_loading(tmp_path, no_loading, caplog, flag):
    inputs = {name: tmp_path / f"{name[2:]}.png" for name in ("--t5", "--vae", "--image", "--control-image", "--hed")}
    inputs["--model"] = tmp_path / "model.png"
    for path in inputs.values():
        path.write_bytes(b"precious " + path.name.encode())
    (tmp_path / "cn.pth").write_bytes(b"controlnet")
    before = snapshot(tmp_path)
    code = main(["generate", "--prompt", "a fox", "--out", str(inputs[flag]), "--controlnet", str(tmp_path / "cn.pth"),
                 "--control-preprocess", "hed", *[part for name, path in inputs.items() for part in (name, str(path))]])
    assert code == 2
    assert f"--out {inputs[flag]}: is the {flag} file" in caplog.text
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("link", ["symlink", "hardlink", "relative"])
def test_out_reaching_the_model_by_another_path_is_refused(tmp_path, no_loading, caplog, monkeypatch, link):
    model = tmp_path / "model.png"
    model.write_bytes(b"weights")
    out = tmp_path / "out.png"
    if link == "symlink":
        out.symlink_to(model)
    elif link == "hardlink":
        os.link(model, out)
    else:
        monkeypatch.chdir(tmp_path)
        out = Path("sub/../model.png")
    before = snapshot(tmp_path)
    assert main(["generate", "--model", str(model), "--prompt", "a", "--out", str(out)]) == 2
    assert "is the --model file" in caplog.text
    assert snapshot(tmp_path) == before


def test_batch_names_are_checked_against_inputs_too(tmp_path, no_loading, caplog):
    image = tmp_path / "out_1.png"
    image.write_bytes(b"input image")
    before = snapshot(tmp_path)
    assert generate(tmp_path, tmp_path / "out.png", "--image", str(image), "--batch", "2") == 2
    assert "is the --image file" in caplog.text and "--out" in caplog.text
    assert snapshot(tmp_path) == before


# --- 2. a folder as --out; temp files on every failure path ------------------------------------------------


def test_out_that_is_a_folder_is_refused_up_front(tmp_path, no_loading, caplog):
    folder = tmp_path / "pictures.png"
    folder.mkdir()
    (folder / "old.png").write_bytes(b"old picture")
    before = snapshot(tmp_path)
    assert generate(tmp_path, folder) == 2
    assert f"--out {folder} is a folder" in caplog.text
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_no_temp_file_and_no_half_batch(tmp_path, fake_pipe, caplog, monkeypatch, error):
    (tmp_path / "out.png").write_bytes(b"an old result")
    before = snapshot(tmp_path)
    real_save = Image.Image.save
    saved = []

    def save_then_fail(self, fp, *args, **kwargs):
        if saved:  # the second image of the batch: the first already sits in its temp file
            Path(fp).write_bytes(b"half")
            raise error
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    code = generate(tmp_path, tmp_path / "out.png", "--batch", "2")
    if isinstance(error, KeyboardInterrupt):
        assert code == 130 and "interrupted; nothing written" in caplog.text
    else:
        assert code == 2 and f"--out {tmp_path / 'out.png'}: could not write" in caplog.text
    assert snapshot(tmp_path) == before  # the old result kept, no .out.png.tmp, no out_1.png


# --- 3. unwritable output locations, found before loading ------------------------------------------------


def test_unwritable_out_locations_are_refused_before_loading(tmp_path, no_loading, caplog):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    before = snapshot(tmp_path)
    cases = {"": "--out is empty", str(tmp_path / "notes.txt" / "x.png"): "is a file, not a folder",
             str(tmp_path / "notes.txt" / "deeper" / "x.png"): "is a file, not a folder",
             "/proc/x.png": "cannot write in /proc"}
    for out, message in cases.items():
        caplog.clear()
        assert generate(tmp_path, out) == 2, out
        assert message in caplog.text and "--out" in caplog.text, caplog.text
    assert snapshot(tmp_path) == before


def test_read_only_folder_is_refused_before_loading(tmp_path, no_loading, caplog):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert with_file_modes_enforced(lambda: generate(tmp_path, folder / "x.png")) == 2
        assert with_file_modes_enforced(lambda: generate(tmp_path, folder / "new" / "x.png")) == 2
    finally:
        folder.chmod(0o755)
    assert "--out" in caplog.text and "cannot write in" in caplog.text
    assert list(folder.iterdir()) == []


# --- 4. out-of-range numbers are refused by name, never replaced -----------------------------------------


@pytest.mark.parametrize("flag, value", [
    ("--steps", "0"), ("--steps", "-3"), ("--steps", "1000"), ("--steps", "2.5"),
    ("--cfg", "nan"), ("--cfg", "inf"), ("--cfg", "-1"), ("--cfg", "101"),
    ("--batch", "0"), ("--batch", "-2"),
    ("--seed", "-1"), ("--seed", str(2**64)),
    ("--strength", "0"), ("--strength", "1.5"), ("--strength", "nan"), ("--strength", "-0.1"),
])
def test_out_of_range_numbers_are_usage_errors_naming_the_flag(tmp_path, no_loading, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        generate(tmp_path, tmp_path / "o.png", f"{flag}={value}")
    assert exit_info.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_the_edges_of_every_range_are_accepted(tmp_path, fake_pipe):
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    assert generate(tmp_path, tmp_path / "o.png", "--steps", str(MAX_STEPS), "--cfg", "100", "--seed",
                    str(2**64 - 1), "--strength", "1", "--image", str(tmp_path / "in.png")) == 0
    call = fake_pipe.calls[-1]
    assert (call["num_inference_steps"], call["guidance_scale"], call["seed"], call["strength"]) == (
        MAX_STEPS, 100.0, 2**64 - 1, 1.0)


@pytest.fixture(scope="module")
def tiny_pipe(tiny_suite):
    return PixArtPipeline.from_pretrained(tiny_suite / "pipelines" / "sigma-256")


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_inference_steps=0), "num_inference_steps"), (dict(num_inference_steps=-1), "num_inference_steps"),
    (dict(guidance_scale=math.nan), "guidance_scale"), (dict(guidance_scale=math.inf), "guidance_scale"),
])
def test_the_library_refuses_what_it_would_replace(tiny_pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        tiny_pipe("a fox", height=64, width=64, use_resolution_binning=False, **kwargs)


# --- 5. every accepted step count runs on every sampler ----------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_at_its_maximum_steps(sampler):
    steps = 50 if sampler == "lcm" else MAX_STEPS  # LCM: its 50-step distillation grid (schedule.lcm_timesteps)
    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))  # [1, 4, 4, 4]
    out = sample(lambda x, t, *args, **kwargs: 0.1 * x, noise, sampler=sampler, steps=steps,
                 generator=torch.Generator().manual_seed(1))  # [1, 4, 4, 4]
    assert torch.isfinite(out).all()


def test_one_step_past_the_maximum_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=f"cannot exceed {MAX_STEPS}"):
        sample(lambda x, t, *args, **kwargs: x, torch.zeros(1, 4, 4, 4), sampler="dpmpp_2m", steps=MAX_STEPS + 1)


def test_the_node_and_the_cli_accept_the_same_steps(pack):
    steps = pack.NODE_CLASS_MAPPINGS["AtelierSampler"].INPUT_TYPES()["required"]["steps"][1]
    assert (steps["min"], steps["max"]) == (1, MAX_STEPS)


# --- 6. the node's seed range works up to its maximum ------------------------------------------------------


def test_the_sampler_node_takes_its_largest_seed(nodes, sigma):
    model, _, positive, negative = sigma
    largest = nodes["AtelierSampler"].INPUT_TYPES()["required"]["seed"][1]["max"]
    assert largest == 2**64 - 1
    (latent,) = nodes["AtelierSampler"]().generate(model, positive, negative, largest, 2, 4.5, "euler_ancestral",
                                                   64, 64, 1)
    assert latent["samples"].shape == (1, 4, 8, 8) and torch.isfinite(latent["samples"]).all()


# --- 7. the --out suffix picks the format ------------------------------------------------------------------


@pytest.mark.parametrize("name, image_format", [("o.jpg", "JPEG"), ("o.JPEG", "JPEG"), ("o.webp", "WEBP"),
                                                ("o.png", "PNG")])
def test_out_suffix_picks_the_format(tmp_path, fake_pipe, name, image_format):
    assert generate(tmp_path, tmp_path / name) == 0
    with Image.open(tmp_path / name) as image:
        assert image.format == image_format and image.size == (16, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.safetensors", name])


@pytest.mark.parametrize("name", ["o.gif", "o.tiff", "o", "o.png.txt"])
def test_other_suffixes_are_refused_naming_out(tmp_path, no_loading, caplog, name):
    assert generate(tmp_path, tmp_path / name) == 2
    assert f"--out {tmp_path / name}: unsupported file type" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# --- 8. Ctrl-C ------------------------------------------------------------------------------------------------


def test_ctrl_c_during_sampling_prints_one_line_and_exits_130(tmp_path, fake_pipe, caplog):
    fake_pipe.fail = KeyboardInterrupt()
    assert generate(tmp_path, tmp_path / "o.png", "--batch", "2") == 130
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert errors == ["interrupted; nothing written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# --- 9. sizes beyond the largest trained PixArt are refused before any model work ---------------------------

TOO_LARGE = [(4096, 4096), (2048, 4096), (4096, 2048), (1040, 4096)]  # (width, height), all over 2048x2048 in area


def test_the_largest_trained_size_passes_and_one_more_row_does_not():
    for height, width in [(2048, 2048), (1024, 4096), (4096, 1024)]:  # Σ-2K's square and 1:4 bins
        check_sampled_size(height, width)
    with pytest.raises(ValueError, match=r"^height/width: 2048 wide x 2064 high \(4,227,072 pixels\) is larger "
                                         r"than the largest trained PixArt size \(Σ-2K, 2048x2048 = 4,194,304 pixels\)"):
        check_sampled_size(2064, 2048, "height/width")
    assert MAX_SAMPLED_AREA == 2048 * 2048


def test_the_node_sizes_stop_at_the_longest_trained_side(pack):
    required = pack.NODE_CLASS_MAPPINGS["AtelierSampler"].INPUT_TYPES()["required"]
    assert required["width"][1]["max"] == required["height"][1]["max"] == MAX_SIDE == 4096


@pytest.fixture
def sampler_module(nodes, monkeypatch):
    """The sampler node's module, its noise and sampling replaced by a failure: refusals must come first."""
    module = sys.modules[nodes["AtelierSampler"].__module__]

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started before the size was refused")

    monkeypatch.setattr(module, "_noise", no_sampling)
    monkeypatch.setattr(module, "sample", no_sampling)
    return module


@pytest.mark.parametrize("width, height", TOO_LARGE)
def test_the_node_refuses_areas_beyond_the_largest_trained_pixart(nodes, sigma, sampler_module, width, height):
    model, _, positive, negative = sigma
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"^width/height: {width} wide x {height} high .* largest trained "
                                         "PixArt .*; generate at most 2048x2048 in area and upscale"):
        nodes["AtelierSampler"]().generate(model, positive, negative, 0, 20, 4.5, "dpmpp_2m", width, height, 1)
    assert time.monotonic() - start < 2


def test_the_node_refuses_a_connected_latent_beyond_it_too(nodes, sigma, sampler_module):
    model, _, positive, negative = sigma
    latent = {"samples": torch.zeros(1, 4, 512, 512)}  # [B, 4, h, w]: 4096x4096 pixels
    with pytest.raises(ValueError, match="^latent: 4096 wide x 4096 high .* largest trained"):
        nodes["AtelierSampler"]().generate(model, positive, negative, 0, 20, 4.5, "dpmpp_2m", 64, 64, 1,
                                           0.5, latent)


@pytest.mark.parametrize("width, height", [(2048, 2048), (1024, 4096)])
def test_the_node_samples_up_to_the_largest_trained_area(nodes, sigma, monkeypatch, sampler_module, width, height):
    model, _, positive, negative = sigma

    def reached(*args, **kwargs):
        raise InterruptedError("reached sampling")

    monkeypatch.setattr(sampler_module, "sample", reached)
    monkeypatch.setattr(sampler_module, "_noise", lambda seed, shape: torch.zeros(shape))  # [B, 4, h, w]
    with pytest.raises(InterruptedError, match="reached sampling"):
        nodes["AtelierSampler"]().generate(model, positive, negative, 0, 20, 4.5, "dpmpp_2m", width, height, 1)


@pytest.mark.parametrize("width, height", TOO_LARGE)
def test_the_cli_refuses_unbinned_areas_before_loading(tmp_path, no_loading, caplog, width, height):
    code = generate(tmp_path, tmp_path / "o.png", "--no-binning", "--width", str(width), "--height", str(height))
    assert code == 2
    assert f"--height/--width: {width} wide x {height} high (" in caplog.text and "upscale" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_the_cli_refuses_it_before_controlnet_preprocessing(tmp_path, no_loading, caplog):
    for name in ("cn.pth", "edges.png"):
        (tmp_path / name).write_bytes(b"never read")
    code = generate(tmp_path, tmp_path / "o.png", "--no-binning", "--width", "4096", "--height", "4096",
                    "--controlnet", str(tmp_path / "cn.pth"), "--control-image", str(tmp_path / "edges.png"))
    assert code == 2 and "--height/--width: 4096 wide x 4096 high" in caplog.text


def test_the_cli_bins_a_large_request_and_only_resizes_the_output(tmp_path, fake_pipe):
    assert generate(tmp_path, tmp_path / "o.png", "--width", "4096", "--height", "4096") == 0
    call = fake_pipe.calls[-1]
    assert (call["height"], call["width"], call["use_resolution_binning"]) == (4096, 4096, True)


def test_the_library_refuses_unbinned_areas_before_encoding(tiny_pipe, monkeypatch):
    def no_encoding(*args, **kwargs):
        raise AssertionError("prompts were encoded before the size was refused")

    monkeypatch.setattr(tiny_pipe, "encode_prompt", no_encoding)
    with pytest.raises(ValueError, match="^--height/--width: 4096 wide x 4096 high .* largest trained"):
        tiny_pipe("a fox", height=4096, width=4096, use_resolution_binning=False)


def test_the_library_samples_a_large_binned_request_at_its_bin(tiny_pipe):
    latents = tiny_pipe("a fox", height=4096, width=4096, num_inference_steps=1, output_type="latent")
    assert latents.shape == (1, 4, 32, 32)  # sampled at the 256x256 bin of the tiny Σ-256
