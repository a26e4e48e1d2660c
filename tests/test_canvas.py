"""The example workflows on the real ComfyUI frontend's canvas, in headless Chromium (tests/canvas/canvas_check.mjs).

Needs COMFYUI_ROOT (and COMFYUI_PYTHON, as the other host tests), /usr/bin/chromium (`apt-get install chromium`)
and playwright-core (`npm install --prefix tests/canvas`); skips naming what is missing. Screenshots and
report.json go to $CANVAS_OUT when set, else to pytest's temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CANVAS_DIR = Path(__file__).resolve().parent / "canvas"
CHROMIUM = Path("/usr/bin/chromium")
UI_WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
RUN_TIMEOUT_S = 900


def _missing_requirement() -> str | None:
    if not os.environ.get("COMFYUI_ROOT"):
        return "set COMFYUI_ROOT to a ComfyUI checkout (and COMFYUI_PYTHON to its venv python) to run the canvas check"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found: install it with `apt-get install chromium` to run the canvas check"
    if shutil.which("node") is None:
        return "node not found on PATH: install Node.js >= 18 to run the canvas check"
    if not (CANVAS_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        return "playwright-core is not installed: run `npm install --prefix tests/canvas` to run the canvas check"
    return None


MISSING = _missing_requirement()
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

from comfy_server import ComfyServer  # noqa: E402
from host_models import write_workflow_models  # noqa: E402

pytestmark = pytest.mark.host

FRONTEND_SETTINGS = {  # no tutorial, minimap or canvas info over the nodes in the screenshots
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.Workflow.WorkflowTabsPosition": "Sidebar",
}


@pytest.fixture(scope="module")
def canvas(tmp_path_factory, pack, t5_tokenizer_dir) -> dict:
    """Start ComfyUI with the tiny workflow models, run the canvas check once; its report plus paths."""
    base = tmp_path_factory.mktemp("canvas_comfyui")
    out = Path(os.environ["CANVAS_OUT"]) if os.environ.get("CANVAS_OUT") else tmp_path_factory.mktemp("canvas_out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)
    write_workflow_models(base, t5_tokenizer_dir)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(FRONTEND_SETTINGS))
    server = ComfyServer.start_from_env(base, probe_nodes=False)
    try:
        command = ["node", "canvas_check.mjs", "--url", server.url, "--out", str(out), "--chromium", str(CHROMIUM),
                   "--user-data-dir", str(tmp_path_factory.mktemp("chromium_profile")), "--run",
                   *map(str, UI_WORKFLOWS)]  # fmt: skip
        result = subprocess.run(command, cwd=CANVAS_DIR, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    finally:
        server.stop()
        shutil.copy(server.log_path, out / "comfyui.log")
    tail = result.stdout[-3000:] + result.stderr[-3000:]
    driver_output = f"\n--- canvas_check.mjs (rc {result.returncode}) ---\n{tail}"
    report_path = out / "report.json"
    assert report_path.exists(), f"canvas_check.mjs wrote no {report_path}{driver_output}{server.log_tail()}"
    report = json.loads(report_path.read_text())
    return {"report": report, "out": out, "base": base, "driver_output": driver_output, "log_tail": server.log_tail()}


@pytest.mark.parametrize("workflow", [p.stem for p in UI_WORKFLOWS])
def test_workflow_loads_clean_on_the_canvas(canvas, workflow):
    """No missing node types, the pack's extension registered, no overlapping or undersized node, no dialog."""
    entries = {entry["name"]: entry for entry in canvas["report"]["workflows"]}
    assert workflow in entries, f"{workflow} was not checked{canvas['driver_output']}"
    entry = entries[workflow]
    assert entry["failures"] == [], f"{workflow} on the canvas (see {entry['screenshot']}): {entry['failures']}"


def test_sigma_text_to_image_runs_from_the_canvas(canvas):
    """Queued from the frontend (tiny model, 2 steps): detected-variant box shown, image saved, nothing overlaps."""
    run = canvas["report"]["run"]
    assert run is not None, f"the run was not attempted{canvas['driver_output']}"
    where = f"(see {run['screenshot']})"
    assert run["failures"] == [], f"after the run {where}: {run['failures']}{canvas['log_tail']}"
    assert run["detected"].startswith("PixArt-Σ 256"), f"detected-variant box says {run['detected']!r} {where}"
    saved = [canvas["base"] / "output" / image["subfolder"] / image["filename"] for image in run["savedImages"]]
    assert saved and all(path.is_file() for path in saved), f"SaveImage reported {run['savedImages']} {where}"


def test_no_page_errors_on_the_canvas(canvas):
    """No uncaught page error other than the frontend's own known ones (report.json's knownFrontendErrors)."""
    errors = canvas["report"]["pageErrors"]
    from_pack = [e for e in errors if "/extensions/" in e or "pixart" in e.lower() or "atelier" in e.lower()]
    assert from_pack == [], f"page errors from the pack's web extension: {from_pack}"
    assert errors == [], f"page errors (not the pack's by their text; check against a bare ComfyUI): {errors}"
