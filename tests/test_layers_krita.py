"""A real editor opens our files: Krita's flattened export of our PSD and ORA equals the stack's composite.

Runs where Debian's `krita` and `xvfb-run` are installed (`apt-get install krita xvfb xauth`); skips otherwise.
Krita runs headless as `xvfb-run -a krita FILE --export --export-filename out.png`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_layers_files import make_stack  # noqa: E402

KRITA_TIMEOUT_S = int(os.environ.get("PIXART_KRITA_TIMEOUT", "300"))  # the first start builds Krita's resource DB

pytestmark = pytest.mark.skipif(
    shutil.which("krita") is None or shutil.which("xvfb-run") is None,
    reason="Krita not installed (needs Debian packages krita xvfb xauth: `apt-get install krita xvfb xauth`)")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    stack = make_stack(3, seed=11)
    folder = tmp_path_factory.mktemp("krita")
    return stack, {"psd": stack.save(folder / "stack.psd"), "ora": stack.save(folder / "stack.ora")}


def krita_env(env: dict[str, str]) -> dict[str, str]:
    """`env` without what importing opencv-python put there: its bundled Qt's plugin and font paths and its
    library folder, which make Krita load an incompatible xcb plugin and abort (rc 134)."""
    env = {k: v for k, v in env.items() if k not in ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR")}
    library_path = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and "cv2" not in p]
    env["LD_LIBRARY_PATH"] = ":".join(library_path)
    return env


def krita_export(path: Path, suffix: str) -> Path:
    """Krita opens `path` and exports it as `suffix` (.png flattens; .psd / .ora keep the layers)."""
    out = path.with_name(path.stem + f"_{path.suffix[1:]}_krita{suffix}")
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "xcb"),
               XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", str(path.parent)))
    try:
        result = subprocess.run(["xvfb-run", "-a", "krita", str(path), "--export", "--export-filename", str(out)],
                                capture_output=True, text=True, timeout=KRITA_TIMEOUT_S, env=krita_env(env))
    except subprocess.TimeoutExpired:
        pytest.skip(f"Krita did not finish exporting {path.name} within {KRITA_TIMEOUT_S} s "
                    f"(set PIXART_KRITA_TIMEOUT to wait longer)")
    assert out.exists(), f"Krita wrote no export (rc {result.returncode}): {result.stderr[-2000:]}"
    return out


@pytest.mark.parametrize("kind", ["psd", "ora"])
def test_krita_flattened_export_equals_composite(saved, kind):
    stack, paths = saved
    exported = Image.open(krita_export(paths[kind], ".png"))
    assert exported.size == (stack.width, stack.height)
    rgba = np.asarray(exported.convert("RGBA"), dtype=np.float64)  # [H, W, 4]
    assert rgba[..., 3].min() == 255  # our background is opaque
    difference = np.abs(rgba[..., :3] - np.asarray(stack.composite, dtype=np.float64))  # [H, W, 3]
    assert difference.mean() <= 2.0, f"{kind}: mean difference {difference.mean():.3f} / 255"


@pytest.mark.parametrize("kind, resaved_as", [("psd", ".ora"), ("ora", ".psd")])
def test_files_krita_writes_load_back_equal(saved, kind, resaved_as):
    """Krita re-saves our file in the other format (its own writer, its own stack.xml order); it loads equal."""
    from pixart_core.layers import LayerStack
    from pixart_core.layers.pixels import visible_difference

    stack, paths = saved
    back = LayerStack.load(krita_export(paths[kind], resaved_as))
    assert [layer.name for layer in back.layers] == [layer.name for layer in stack.layers]
    for ours, theirs in zip(stack.layers, back.layers):
        assert visible_difference(ours.image, theirs.image) <= 1.0
