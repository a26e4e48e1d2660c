"""The region editor on the PixArt Layout node, in the real ComfyUI frontend (tests/canvas/layers_check.mjs).

Boxes are drawn, named, moved, resized and reordered by mouse and keyboard in headless Chromium; the queued
prompt must carry exactly the editor's layout, the server must build that Layout (a test-only probe node shows
it), a saved and reloaded workflow must show the same boxes, invalid JSON typed into the widget must be refused
before anything runs, and layer thumbnails sent for a Generate Layers node must load into the boxes. On a PixArt
Load Layers node, its "upload layer file" button is clicked and an ORA picked in the browser's file chooser: the
file must reach the server's input folder and the node's file widget.
Needs what tests/test_canvas.py needs (COMFYUI_ROOT, /usr/bin/chromium, `npm install --prefix tests/canvas`).
Screenshots and layers_report.json go to $CANVAS_OUT when set; PIXART_UPDATE_SCREENSHOTS=1 also copies the
poster workflow's screenshot to docs/images/layers_poster.png (the README picture).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_canvas import CANVAS_DIR, CHROMIUM, FRONTEND_SETTINGS, MISSING, ROOT

if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

from comfy_server import ComfyServer  # noqa: E402

pytestmark = pytest.mark.host

PROBE_FILE = CANVAS_DIR / "layout_probe_node.py"
POSTER = ROOT / "workflows" / "pixart_layers_poster.json"
DOCS_SCREENSHOT = ROOT / "docs" / "images" / "layers_poster.png"
THUMB_NAME = "pixart_layers_check_thumb.png"
UPLOAD_NAME = "pixart_layers_check_upload.ora"
START_TIMEOUT_S = 600  # importing torch and the pack on a busy 2-core machine
RUN_TIMEOUT_S = 900
TOLERANCE = 8  # layout pixels: a mouse position is whole screen pixels, ~2.7 layout pixels each at 1024 wide


@pytest.fixture(scope="module")
def check(tmp_path_factory, pack) -> dict:
    """Start ComfyUI with the pack and the layout probe, run layers_check.mjs once; its report."""
    from PIL import Image

    base = tmp_path_factory.mktemp("layers_comfyui")
    out = Path(os.environ["CANVAS_OUT"]) if os.environ.get("CANVAS_OUT") else tmp_path_factory.mktemp("layers_out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "layers_report.json").unlink(missing_ok=True)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({**FRONTEND_SETTINGS, "Comfy.Workflow.ShowMissingModelsWarning": False}))
    server = ComfyServer(Path(os.environ["COMFYUI_ROOT"]), base, probe_nodes=False,
                         cpu=os.environ.get("COMFYUI_DEVICE", "cpu") != "gpu")
    (base / "custom_nodes" / PROBE_FILE.name).symlink_to(PROBE_FILE)
    (base / "temp").mkdir(exist_ok=True)
    upload = tmp_path_factory.mktemp("upload") / UPLOAD_NAME
    _two_layer_stack().save(upload)
    try:
        server.start(timeout=START_TIMEOUT_S)
        # after start: ComfyUI empties its temp folder when it starts
        Image.new("RGBA", (64, 48), (255, 200, 0, 255)).save(base / "temp" / THUMB_NAME)
        command = ["node", "layers_check.mjs", "--url", server.url, "--out", str(out), "--chromium", str(CHROMIUM),
                   "--user-data-dir", str(tmp_path_factory.mktemp("chromium_profile")),
                   "--thumb", str(base / "temp" / THUMB_NAME),
                   "--upload", str(upload),
                   *(["--poster", str(POSTER)] if POSTER.exists() else [])]  # fmt: skip
        result = subprocess.run(command, cwd=CANVAS_DIR, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    finally:
        server.stop()
        if server.log_path.exists():
            shutil.copy(server.log_path, out / "comfyui.log")
    driver = f"\n--- layers_check.mjs (rc {result.returncode}) ---\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    path = out / "layers_report.json"
    assert path.exists(), f"layers_check.mjs wrote no {path}{driver}{server.log_tail()}"
    report = json.loads(path.read_text())
    assert not report.get("error"), f"layers_check.mjs stopped: {report.get('error')}{driver}{server.log_tail()}"
    if os.environ.get("PIXART_UPDATE_SCREENSHOTS") == "1" and (out / "layers_poster.png").exists():
        shutil.copy(out / "layers_poster.png", DOCS_SCREENSHOT)
    return {"report": report, "out": out, "driver": driver, "upload": upload, "input": base / "input"}


def _two_layer_stack():
    """A 64x48 stack: an opaque background and a half-size red square (the file the browser uploads)."""
    from PIL import Image

    from pixart_core import Layer, LayerStack

    square = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    square.paste((220, 30, 30, 255), (16, 12, 48, 36))
    return LayerStack([Layer("background", Image.new("RGBA", (64, 48), (40, 90, 200, 255)), (0, 0, 64, 48), ""),
                       Layer("square", square, (16, 12, 48, 36), "")], 64, 48)


def _near(box, expected):
    return all(abs(a - b) <= TOLERANCE for a, b in zip(box, expected))


def test_boxes_drawn_by_mouse_reach_the_server(check):
    report = check["report"]
    assert "pixart_atelier.region_editor" in report["extensions"]
    drawn = report["draw"]["layers"]
    assert [layer["name"] for layer in drawn] == ["sun", "tree"], drawn
    assert _near(drawn[0]["box"], [100, 100, 400, 500]) and _near(drawn[1]["box"], [520, 200, 920, 700]), drawn
    edited = report["resizeAndRaise"]["layers"]
    by_name = {layer["name"]: layer for layer in edited}
    assert [layer["name"] for layer in edited] == ["tree", "sun"], "raising 'sun' puts it on top"
    assert _near(by_name["sun"]["box"], [300, 150, 600, 550]), by_name["sun"]  # moved by (+200, +50)
    assert _near(by_name["tree"]["box"], [520, 200, 820, 600]), by_name["tree"]  # resized by (-100, -100)
    assert by_name["sun"]["prompt"] == "a yellow sun" and by_name["tree"]["prompt"] == "a green tree"

    run = report["queue"]
    editor_text = run["state"]["text"]
    assert json.loads(editor_text)["layers"] == edited, "the layout widget follows the editor"
    received = json.loads(run["received"])  # the Layout the server built, as the probe saw it
    assert (received["width"], received["height"]) == (1024, 768)
    assert received["prompt"] == "a flat poster of a garden" and received["background"] == {"prompt": "a pale blue sky"}
    assert [(layer["name"], layer["prompt"], layer["box"]) for layer in received["layers"]] == \
        [(layer["name"], layer["prompt"], layer["box"]) for layer in edited]
    prompts = [entry["prompt"][2] for entry in run["history"].values()]
    layout_inputs = [node["inputs"] for prompt in prompts for node in prompt.values()
                     if node["class_type"] == "AtelierLayout"]
    assert layout_inputs and layout_inputs[-1]["layout"] == editor_text, "the queued prompt carries the editor's JSON"
    assert set(layout_inputs[-1]) == {"layout", "width", "height", "prompt", "background"}, "no editor input queued"


def test_saved_workflow_keeps_and_shows_the_boxes(check):
    report = check["report"]
    values = report["reload"]["widgets_values"]
    assert len(values) == 5 and values[1:3] == [1024, 768], values
    assert json.loads(values[0])["layers"] == report["queue"]["state"]["layers"]
    assert report["reload"]["state"]["layers"] == report["queue"]["state"]["layers"]
    assert report["reload"]["state"]["error"] is None


def test_invalid_layout_json_is_refused_before_running(check):
    invalid = check["report"]["invalid"]
    assert invalid["state"]["error"].startswith("layout: invalid JSON"), invalid["state"]
    answer = invalid["answer"]
    assert answer["status"] == 400, answer
    errors = [e for node in answer["body"]["node_errors"].values() for e in node["errors"]]
    assert errors and all("layout: invalid JSON" in e["details"] for e in errors), errors
    assert invalid["restored"]["error"] is None


def test_layer_thumbnails_load_into_the_boxes(check):
    thumbs = check["report"]["thumbs"]
    if "skipped" in thumbs:
        pytest.skip(thumbs["skipped"])
    assert thumbs["images"] and all(image["complete"] and image["width"] == 64 for image in thumbs["images"]), thumbs


def test_changing_the_width_scales_the_boxes(check):
    report = check["report"]
    before, after = report["queue"]["state"]["layers"], report["rescale"]["layers"]
    assert report["rescale"]["size"] == [512, 768]
    for old, new in zip(before, after):
        x0, y0, x1, y1 = old["box"]
        assert new["box"] == [math.floor(x0 / 2 + 0.5), y0, math.floor(x1 / 2 + 0.5), y1], (old, new)  # JS Math.round
    assert json.loads(report["rescale"]["text"])["layers"] == after


def test_delete_key_removes_the_box_not_the_node(check):
    report = check["report"]
    removed = report["keyDelete"]
    assert "AtelierLayout" in removed["nodes"]
    assert [layer["name"] for layer in removed["state"]["layers"]] == \
        [layer["name"] for layer in report["rescale"]["layers"]][1:]


def test_layer_file_uploaded_by_the_button_reaches_the_server_and_the_node(check):
    from pixart_core import LayerStack

    uploaded = check["report"]["upload"]
    assert uploaded["value"] == UPLOAD_NAME and uploaded["widgets_values"] == [UPLOAD_NAME], uploaded
    assert uploaded["accept"] and ".ora" in uploaded["accept"], uploaded  # the chooser offers layer files
    stored = check["input"] / UPLOAD_NAME
    assert stored.read_bytes() == check["upload"].read_bytes()
    assert [layer.name for layer in LayerStack.load(stored).layers] == ["background", "square"]


def test_no_page_errors(check):
    report = check["report"]
    assert report["pageErrors"] == [], report["pageErrors"]
    assert not [p for p in report["consoleProblems"] if "pixart" in p.lower() or "atelier" in p.lower()], \
        report["consoleProblems"]
