"""The pack inside a real ComfyUI server (needs COMFYUI_ROOT; see tests/comfy_server.py)."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest

if not os.environ.get("COMFYUI_ROOT"):
    pytest.skip(
        "set COMFYUI_ROOT to a ComfyUI checkout (and COMFYUI_PYTHON to its venv python) to run the real-host tests",
        allow_module_level=True,
    )

from pixart_core.dtypes import default_dtype

from comfy_server import PACK_FOLDER_NAME, ComfyServer, read_image, run_workflow, saved_images, status_messages
from host_models import write_workflow_models

pytestmark = pytest.mark.host


TINY_VAES = ("sd_diffusers", "sd_ldm.safetensors", "sdxl_diffusers_single.safetensors")


WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows" / "api"
# RGBA workflows (#9): they save RGBA PNGs (plus a checkerboard preview), tested by test_transparent_workflow_runs
TRANSPARENT_WORKFLOWS = ("pixart_rgba_img2img", "pixart_sigma_transparent_sticker")
LAYER_WORKFLOW_PREFIX = "pixart_layers_"  # run by tests/test_host_layers.py (they save PSD / ORA, not one PNG)


@pytest.fixture(scope="session")
def server(tmp_path_factory, pack, t5_tokenizer_dir):
    from pixart_atelier.pixart_core.testing.vae import write_tiny_vaes

    base = tmp_path_factory.mktemp("comfyui")
    write_workflow_models(base, t5_tokenizer_dir)
    hf_t5 = base / "models" / "text_encoders" / "t5-test"
    hf_t5.mkdir(parents=True)
    (hf_t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (hf_t5 / "model.safetensors").write_bytes(b"")
    write_tiny_vaes(base / "models" / "vae")
    server = ComfyServer.start_from_env(base)
    try:
        yield server
    finally:
        server.stop()


def import_lines(server: ComfyServer) -> list[str]:
    """The "Import times for custom nodes" lines that name a folder of ours."""
    return [line for line in server.log_text().splitlines() if re.search(r"seconds.*custom_nodes[/\\]", line)]


def probe(steps=3, seconds_per_step=0.0, latent_space="sdxl", vae_names=""):
    inputs = {"steps": steps, "seconds_per_step": seconds_per_step, "latent_space": latent_space,
              "vae_names": vae_names}
    return {"1": {"class_type": "AtelierHostProbe", "inputs": inputs}}


def test_pack_imports(server):
    lines = import_lines(server)
    ours = [line for line in lines if line.rstrip().endswith(PACK_FOLDER_NAME)]
    assert ours, f"no import line for {PACK_FOLDER_NAME}{server.log_tail()}"
    failed = [line for line in lines if "IMPORT FAILED" in line]
    assert not failed, f"custom node import failed: {failed}{server.log_tail()}"


def test_every_node_is_registered(server, pack):
    info = server.object_info()
    missing = sorted(set(pack.NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"nodes missing from /object_info: {missing}{server.log_tail()}"
    for node_id in pack.NODE_CLASS_MAPPINGS:
        assert info[node_id]["python_module"] == f"custom_nodes.{PACK_FOLDER_NAME}"
        assert info[node_id]["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id)
    assert "AtelierHostProbe" in info and "SaveImage" in info


def test_core_workflow_saves_png(server):
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0xFF8000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "atelier/core"}},
    }
    entry = run_workflow(server, workflow, timeout=120)
    paths = saved_images(server, entry)
    assert len(paths) == 1 and paths[0].suffix == ".png" and paths[0].is_file(), paths
    assert paths[0].parent == server.base / "output" / "atelier"
    pixels = read_image(paths[0])
    assert pixels.shape == (48, 64, 3)
    assert tuple(pixels[0, 0]) == (255, 128, 0)


def test_host_adapter_inside_comfyui(server):
    entry = run_workflow(server, probe(steps=3, latent_space="sdxl"), timeout=120)
    report = json.loads(entry["outputs"]["1"]["probe"][0])
    assert report["in_comfyui"] is True
    assert report["host_module"].endswith(f"{PACK_FOLDER_NAME}.nodes.host")
    assert report["compute_device"] == "cpu" and report["offload_device"] == "cpu"  # the server runs --cpu
    assert report["default_dtype"] == str(default_dtype("cpu"))  # no --force-* flag: the CPU's own default
    assert Path(report["tokenizer_dir"]).name == "t5_tokenizer"
    assert (Path(report["tokenizer_dir"]) / "tokenizer.json").is_file()
    assert "t5-test" in report["models"]["text_encoders"]
    assert report["text_encoder_path"] == str(server.base / "models" / "text_encoders" / "t5-test")
    assert set(TINY_VAES) <= set(report["models"]["vae"])
    assert not any("diffusion_pytorch_model" in name for name in report["models"]["vae"])  # folders by name
    assert str(server.base / "models" / "vae") in report["model_folders"]
    assert report["patcher_class"] == "ModelPatcher" and report["loaded_is_module"] is True
    assert report["weight_device"] == "cpu" and report["patcher_in_loaded_models"] is True
    assert report["override_load_device"] == "cpu" and report["previews_enabled"] is True
    assert report["should_stop"] is False
    progress = server.events.of_prompt(entry["prompt_id"], "progress")
    assert [(m["data"]["value"], m["data"]["max"]) for m in progress] == [(1, 3), (2, 3), (3, 3)]


def test_load_vae_gives_a_core_vae_matching_pixart_core(server):
    entry = run_workflow(server, probe(steps=1, vae_names=",".join(TINY_VAES)), timeout=180)
    vaes = json.loads(entry["outputs"]["1"]["probe"][0])["vaes"]
    for name in TINY_VAES:
        assert vaes[name]["class"] == "comfy.sd.VAE", name
        assert vaes[name]["decode_shape"] == [1, 24, 40, 3], name
        assert vaes[name]["decode_max_abs_diff"] < 1e-4, (name, vaes[name])
        assert vaes[name]["encode_max_abs_diff"] < 1e-4, (name, vaes[name])


# The probe's latent is 1 in channel 0 and 0 elsewhere, so ComfyUI's Latent2RGB preview is that channel's
# RGB factor (+ bias for SDXL) mapped from -1..1 to 0..255: SD15 (0.3512, 0.2297, 0.3227),
# SDXL (0.3651 + 0.1084, 0.4232 - 0.0175, 0.4341 - 0.0011).
@pytest.mark.parametrize("latent_space, rgb", [("sd15", (172, 156, 168)), ("sdxl", (187, 179, 182))])
def test_latent_previews_are_sent(server, latent_space, rgb):
    from PIL import Image

    before = len(server.events.previews)
    run_workflow(server, probe(steps=2, latent_space=latent_space), timeout=120)
    previews = server.events.previews[before:]
    assert len(previews) == 2, f"expected 2 previews (server runs --preview-method auto), got {len(previews)}"
    with Image.open(io.BytesIO(previews[-1])) as image:
        assert image.format == "JPEG"
        assert image.size == (512, 256)  # the 32x16 latent scaled to fit --preview-size 512
        centre = image.convert("RGB").getpixel((256, 128))
    assert max(abs(a - b) for a, b in zip(centre, rgb, strict=True)) <= 3, (centre, rgb)


def test_interrupt_stops_a_running_node(server):
    prompt_id = server.submit(probe(steps=400, seconds_per_step=0.05))
    started = server.events.wait_for(lambda: server.events.of_prompt(prompt_id, "progress"), timeout=60)
    assert started, f"no progress event{server.log_tail()}"
    server.interrupt()
    entry = server.wait(prompt_id, timeout=60)
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in status_messages(entry), entry["status"]
    last = server.events.of_prompt(prompt_id, "progress")[-1]["data"]["value"]
    assert last < 400
    # the server keeps working after an interrupt
    assert run_workflow(server, probe(steps=1), timeout=60)["status"]["completed"] is True


def small(api: dict, steps: int = 4) -> dict:
    """An example workflow made cheap for the CPU: 256x256 (the Σ-256 model where bins decide), few steps."""
    api = json.loads(json.dumps(api))
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "AtelierResolutionSelect":
            api[inputs["model"][0]]["inputs"]["model_name"] = "PixArt-Sigma-XL-2-256x256.pth"
        if node["class_type"] == "AtelierSampler":
            inputs["steps"] = steps
            for side in ("width", "height"):
                if not isinstance(inputs[side], list):
                    inputs[side] = 256
    return api


@pytest.mark.parametrize("path", [p for p in sorted(WORKFLOWS.glob("*.json")) if p.stem not in TRANSPARENT_WORKFLOWS
                                  and not p.stem.startswith(LAYER_WORKFLOW_PREFIX)], ids=lambda p: p.stem)
def test_example_workflow_runs(server, path):
    api = small(json.loads(path.read_text()))
    previews_before = len(server.events.previews)
    entry = run_workflow(server, api, timeout=600)
    images = saved_images(server, entry)
    assert len(images) == 1 and images[0].is_file(), entry["outputs"]
    pixels = read_image(images[0])
    assert pixels.shape == (256, 256, 3), pixels.shape
    assert pixels.std() > 1.0, "the saved image is flat"
    sampler_id = next(k for k, v in api.items() if v["class_type"] == "AtelierSampler")
    progress = [m["data"] for m in server.events.of_prompt(entry["prompt_id"], "progress")
                if m["data"].get("node") == sampler_id]
    denoise = api[sampler_id]["inputs"]["denoise"] if "latent" in api[sampler_id]["inputs"] else 1.0
    steps = int(4 * denoise)  # image-to-image runs the last denoise * steps steps
    assert [p["value"] for p in progress] == list(range(1, steps + 1)), progress
    assert {p["max"] for p in progress} == {steps}, progress
    assert len(server.events.previews) - previews_before >= steps, "the sampler sent no latent previews"


def test_interrupt_stops_a_long_pixart_run(server):
    api = small(json.loads((WORKFLOWS / "pixart_sigma_1024_text_to_image.json").read_text()), steps=500)
    prompt_id = server.submit(api)
    started = server.events.wait_for(
        lambda: [m for m in server.events.of_prompt(prompt_id, "progress") if m["data"]["max"] == 500], timeout=300)
    assert started, f"the sampler never reported progress{server.log_tail()}"
    server.interrupt()
    entry = server.wait(prompt_id, timeout=120)
    assert "execution_interrupted" in status_messages(entry), entry["status"]
    assert server.events.of_prompt(prompt_id, "progress")[-1]["data"]["value"] < 500


def _write_rgba_input(server: ComfyServer, name: str) -> None:
    """A 256x256 RGBA PNG in the server's input folder: a colour gradient, opaque disc, soft edge, clear corners."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:256, 0:256]
    alpha = np.clip((100.0 - np.hypot(y - 128.0, x - 128.0)) / 12.0, 0.0, 1.0)  # [256, 256]
    rgba = np.stack([x, y, 255 - x, 255 * alpha], axis=-1).astype("uint8")  # [256, 256, 4]
    Image.fromarray(rgba, "RGBA").save(server.base / "input" / name)


@pytest.mark.parametrize("name", TRANSPARENT_WORKFLOWS)
def test_transparent_workflow_runs(server, name):
    """The RGBA examples at 256x256 on the tiny Σ-256, 4 steps: Save RGBA writes one RGBA PNG with the prompt
    embedded, which core Join Image with Alpha + Save Image on the decoder's IMAGE and MASK writes identically."""
    api = json.loads((WORKFLOWS / f"{name}.json").read_text())
    by_type = {node["class_type"]: node_id for node_id, node in api.items()}
    api[by_type["AtelierModelLoader"]]["inputs"]["model_name"] = "PixArt-Sigma-XL-2-256x256.pth"
    sampler_id = by_type.get("AtelierTransparentSampler") or by_type["AtelierSampler"]
    api[sampler_id]["inputs"].update(steps=4, width=256, height=256)
    if "LoadImage" in by_type:
        _write_rgba_input(server, api[by_type["LoadImage"]]["inputs"]["image"])
    decode_id, save_id = by_type["AtelierTransparentDecode"], by_type["AtelierSaveRGBA"]
    api["90"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": [decode_id, 0], "alpha": [decode_id, 1]}}
    api["91"] = {"class_type": "SaveImage", "inputs": {"images": ["90", 0], "filename_prefix": "atelier/joined"}}
    entry = run_workflow(server, api, timeout=600)

    (ours,) = saved_images(server, entry, save_id)
    (core,) = saved_images(server, entry, "91")
    assert ours.parent == server.base / "output" and ours.suffix == ".png"
    pixels = read_image(ours)
    assert pixels.shape == (256, 256, 4), pixels.shape
    assert (read_image(core) == pixels).all(), "Save RGBA and core Join Image with Alpha + Save Image differ"
    from PIL import Image

    with Image.open(ours) as saved, Image.open(core) as joined:
        assert saved.mode == joined.mode == "RGBA"
        assert json.loads(saved.text["prompt"]) == json.loads(joined.text["prompt"])
    (preview,) = saved_images(server, entry, by_type["PreviewImage"])
    assert read_image(preview).shape == (256, 256, 3)
    engine = entry["outputs"][decode_id]["text"][0]
    engine_name = api[decode_id]["inputs"]["engine"]
    assert engine_name in engine, engine
    progress = [m["data"]["value"] for m in server.events.of_prompt(entry["prompt_id"], "progress")
                if m["data"].get("node") == sampler_id]
    steps = 4 if "latent" not in api[sampler_id]["inputs"] else int(4 * api[sampler_id]["inputs"]["denoise"])
    assert progress == list(range(1, steps + 1)), progress
