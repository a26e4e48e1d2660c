"""The layered-design workflows (#11) inside a real ComfyUI server (needs COMFYUI_ROOT; see tests/comfy_server.py):
poster -> PSD, sticker sheet -> ORA + PNG folder, Load Layers (uploaded PSD) -> Regenerate Layer -> PSD; the
files open (psd-tools, LayerStack.load) with the workflow embedded; progress, previews, thumbnails and Cancel;
an invalid layout is refused before anything runs and nothing is written."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

if not os.environ.get("COMFYUI_ROOT"):
    pytest.skip("set COMFYUI_ROOT to a ComfyUI checkout (and COMFYUI_PYTHON to its venv python) to run the "
                "real-host tests", allow_module_level=True)

from comfy_server import ComfyServer, ComfyServerError, run_workflow, saved_images, status_messages
from host_models import write_workflow_models

pytestmark = pytest.mark.host

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
LAYER_NODES = ("AtelierLayout", "AtelierGenerateLayers", "AtelierRegenerateLayer", "AtelierLayerSelect",
               "AtelierSaveLayers", "AtelierLoadLayers")
SMALL = 256  # the tiny Σ-256 at 256 px wide: CPU-cheap


@pytest.fixture(scope="module")
def server(tmp_path_factory, pack, t5_tokenizer_dir):
    base = tmp_path_factory.mktemp("comfyui_layers")
    write_workflow_models(base, t5_tokenizer_dir)
    (base / "input").mkdir(exist_ok=True)
    for item in (base / "tiny" / "comfyui" / "input").iterdir():  # what make-tiny writes for the workflows
        shutil.copy2(item, base / "input" / item.name)
    server = ComfyServer.start_from_env(base)
    try:
        yield server
    finally:
        server.stop()


def load(name: str) -> tuple[dict, dict]:
    """(API prompt, UI workflow) of an example."""
    return (json.loads((WORKFLOWS / "api" / f"{name}.json").read_text()),
            json.loads((WORKFLOWS / f"{name}.json").read_text()))


def small(api: dict, steps: int = 2) -> dict:
    """The example on the tiny Σ-256: the layout's canvas scaled to 256 px wide (boxes with it), few steps."""
    api = json.loads(json.dumps(api))
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "AtelierModelLoader":
            inputs["model_name"] = "PixArt-Sigma-XL-2-256x256.pth"
        if node["class_type"] == "AtelierLayout":
            scale = inputs["width"] // SMALL
            inputs["width"], inputs["height"] = SMALL, inputs["height"] // scale
            layers = json.loads(inputs["layout"])["layers"]
            for layer in layers:
                layer["box"] = [v // scale for v in layer["box"]]
            inputs["layout"] = json.dumps({"layers": layers})
        if node["class_type"] in ("AtelierGenerateLayers", "AtelierRegenerateLayer"):
            inputs["steps"] = steps
    return api


def by_type(api: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for node_id, node in api.items():
        found.setdefault(node["class_type"], []).append(node_id)
    return found


def run_with_workflow(server: ComfyServer, api: dict, ui: dict, timeout: float = 600) -> dict:
    """Run as the frontend queues it: the UI workflow rides along in extra_pnginfo (what Save Layers embeds)."""
    answer = server.request("POST", "/prompt", {"prompt": api, "client_id": server.client_id,
                                                "extra_data": {"extra_pnginfo": {"workflow": ui}}})
    entry = server.wait(answer["prompt_id"], timeout)
    entry["prompt_id"] = answer["prompt_id"]
    assert entry["status"]["status_str"] == "success", json.dumps(status_messages(entry))[:3000] + server.log_tail(40)
    return entry


def saved_layer_files(server: ComfyServer, entry: dict, node_id: str) -> list[Path]:
    return [server.base / "output" / item["subfolder"] / item["filename"]
            for item in entry["outputs"][node_id]["layer_files"]]


def output_files(server: ComfyServer) -> set[Path]:
    return {p for p in (server.base / "output").rglob("*")}


def check_generation(server: ComfyServer, entry: dict, node_id: str, names: list[str], steps: int = 2) -> None:
    """Progress per phase (1..total, restarting per phase), a latent preview per step, thumbnails in temp/."""
    progress = [m["data"] for m in server.events.of_prompt(entry["prompt_id"], "progress")
                if m["data"].get("node") == node_id]
    assert progress and progress[0]["value"] == 1, progress
    assert [p["value"] for p in progress[:steps]] == list(range(1, steps + 1)), progress
    thumbs = entry["outputs"][node_id]["layer_thumbs"]
    assert [t["name"] for t in thumbs] == names
    for thumb in thumbs:
        assert (server.base / "temp" / thumb["subfolder"] / thumb["filename"]).is_file()


def test_layer_nodes_are_registered(server):
    info = server.object_info()
    for node_id in LAYER_NODES:
        assert node_id in info, f"{node_id} missing{server.log_tail()}"
    assert "pixart_layers_poster.psd" in info["AtelierLoadLayers"]["input"]["required"]["file"][0]


def test_poster_workflow_saves_a_psd(server, pack):
    from psd_tools import PSDImage

    from pixart_atelier.nodes.layer_files import read_embedded_workflow
    from pixart_atelier.pixart_core.layers import LayerStack

    api, ui = load("pixart_layers_poster")
    api = small(api)
    ids = by_type(api)
    previews_before = len(server.events.previews)
    entry = run_with_workflow(server, api, ui)
    names = ["background", "sun", "birds", "fox"]
    check_generation(server, entry, ids["AtelierGenerateLayers"][0], names)
    assert len(server.events.previews) - previews_before >= 2, "no latent previews were sent"
    (psd_path,) = saved_layer_files(server, entry, ids["AtelierSaveLayers"][0])
    assert psd_path.suffix == ".psd" and psd_path.parent == server.base / "output"
    psd = PSDImage.open(psd_path)
    assert (psd.width, psd.height) == (SMALL, SMALL) and [layer.name for layer in psd] == names
    stack = LayerStack.load(psd_path)
    assert stack.layout is not None and [spec.name for spec in stack.layout.layers] == names[1:]
    embedded = read_embedded_workflow(psd_path)
    assert embedded["prompt"] == api and embedded["workflow"] == ui
    (preview,) = saved_images(server, entry, ids["PreviewImage"][0])
    assert np.asarray(stack.composite).shape == (SMALL, SMALL, 3) and preview.is_file()


def test_sticker_sheet_saves_ora_and_pngs(server, pack):
    from PIL import Image

    from pixart_atelier.nodes.layer_files import read_embedded_workflow
    from pixart_atelier.pixart_core.layers import LayerStack

    api, ui = load("pixart_layers_sticker_sheet")
    api = small(api)
    ids = by_type(api)
    entry = run_with_workflow(server, api, ui)
    names = ["background"] + [f"sticker {i}" for i in range(1, 7)]
    check_generation(server, entry, ids["AtelierGenerateLayers"][0], names)
    paths = [path for node_id in ids["AtelierSaveLayers"] for path in saved_layer_files(server, entry, node_id)]
    ora, folder = sorted(paths, key=lambda p: p.suffix != ".ora")
    assert ora.suffix == ".ora" and folder.is_dir()
    stacks = [LayerStack.load(ora), LayerStack.load(folder)]
    for stack in stacks:
        assert [layer.name for layer in stack.layers] == names and (stack.width, stack.height) == (SMALL, 192)
    for ours, theirs in zip(*(s.layers for s in stacks)):
        assert np.array_equal(np.asarray(ours.image), np.asarray(theirs.image))
    for layer in stacks[0].layers[1:]:  # transparent stickers: clear outside their box
        alpha = np.asarray(layer.image)[..., 3]
        assert alpha.min() == 0, layer.name
    assert sorted(p.name for p in folder.iterdir())[:2] == ["000_background.png", "001_sticker-1.png"]
    with Image.open(folder / "composite.png") as composite:
        assert json.loads(composite.text["workflow"]) == ui
    assert read_embedded_workflow(ora)["prompt"] == api


def upload(server: ComfyServer, path: Path, name: str) -> dict:
    """POST /upload/image (multipart, as the frontend uploads) into the input folder."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/vnd.adobe.photoshop\r\n\r\n").encode() + path.read_bytes() + \
        (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\ninput\r\n"
         f"--{boundary}--\r\n").encode()
    request = urllib.request.Request(server.url + "/upload/image", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_regenerate_workflow_on_an_uploaded_psd(server, pack):
    from pixart_atelier.pixart_core.layers import LayerStack

    source = server.base / "input" / "pixart_layers_poster.psd"
    assert upload(server, source, "uploaded_poster.psd")["name"] == "uploaded_poster.psd"
    assert "uploaded_poster.psd" in server.object_info()["AtelierLoadLayers"]["input"]["required"]["file"][0]
    api, ui = load("pixart_layers_regenerate")
    api = small(api)
    ids = by_type(api)
    api[ids["AtelierLoadLayers"][0]]["inputs"]["file"] = "uploaded_poster.psd"
    entry = run_with_workflow(server, api, ui)
    regenerate_id = ids["AtelierRegenerateLayer"][0]
    check_generation(server, entry, regenerate_id, ["background", "sun", "birds", "fox"])
    (psd_path,) = saved_layer_files(server, entry, ids["AtelierSaveLayers"][0])
    before, after = LayerStack.load(source), LayerStack.load(psd_path)
    assert [layer.name for layer in after.layers] == ["background", "sun", "birds", "fox"]
    for index in range(3):  # every other layer pixel-identical
        assert np.array_equal(np.asarray(before.layers[index].image), np.asarray(after.layers[index].image))
    assert after.layers[3].prompt == api[regenerate_id]["inputs"]["prompt"]
    assert not np.array_equal(np.asarray(before.layers[3].image), np.asarray(after.layers[3].image))
    (selected,) = saved_images(server, entry, ids["PreviewImage"][0])
    assert selected.is_file()


@pytest.mark.parametrize("layout, message", [
    ("{\"layers\": [", "layout: invalid JSON"),
    (json.dumps({"layers": [{"name": "sun", "prompt": "a sun", "box": [0, 0, 300, 64]}]}),
     "layout.layers[0] ('sun').box: [0, 0, 300, 64] lies outside the 256x256 canvas"),
])
def test_invalid_layout_is_refused_before_sampling(server, layout, message):
    api = small(load("pixart_layers_poster")[0])
    api[by_type(api)["AtelierLayout"][0]]["inputs"]["layout"] = layout
    before = output_files(server)
    progress_before = len([m for m in server.events.messages if m.get("type") == "progress"])
    with pytest.raises(ComfyServerError, match=r"prompt rejected \(400\)") as error:
        server.submit(api)
    assert message in str(error.value)
    assert output_files(server) == before
    assert len([m for m in server.events.messages if m.get("type") == "progress"]) == progress_before


def test_cancel_stops_layered_generation_and_writes_nothing(server):
    api = small(load("pixart_layers_poster")[0], steps=400)
    generate_id = by_type(api)["AtelierGenerateLayers"][0]
    before = output_files(server)
    prompt_id = server.submit(api)
    started = server.events.wait_for(
        lambda: [m for m in server.events.of_prompt(prompt_id, "progress") if m["data"].get("node") == generate_id],
        timeout=300)
    assert started, f"Generate Layers never reported progress{server.log_tail()}"
    server.interrupt()
    entry = server.wait(prompt_id, timeout=120)
    assert "execution_interrupted" in status_messages(entry), entry["status"]
    assert server.events.of_prompt(prompt_id, "progress")[-1]["data"]["value"] < 400
    assert output_files(server) == before
    assert run_workflow(server, small(load("pixart_layers_poster")[0]), timeout=600)["status"]["completed"]
