"""Write the layered-design example workflows (#11) in both formats, with `build_workflows.py`'s machinery:
workflows/pixart_layers_poster.json (a layout of a background, a subject and two elements -> PSD),
pixart_layers_sticker_sheet.json (6 transparent stickers on one canvas -> ORA and a PNG folder) and
pixart_layers_regenerate.json (Load Layers on a PSD -> Regenerate Layer -> PSD), plus workflows/api/ copies.

Run: `python tools/build_layer_workflows.py` (tests/test_nodes_layers.py checks the committed files).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _base():
    """tools/build_workflows.py as a module (Node, to_ui, to_api, the node sizes)."""
    if "build_workflows" not in sys.modules:
        spec = importlib.util.spec_from_file_location("build_workflows", ROOT / "tools" / "build_workflows.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["build_workflows"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["build_workflows"]


base = _base()
Node = base.Node
# Node body sizes (at least frontend 1.27's computeSize) and the room a run adds: latent previews on the
# generating nodes (as on the sampler), the composite preview on Save Layers is inside its size.
LAYER_UI_SIZES = {
    "AtelierLayout": [520, 720], "AtelierGenerateLayers": [320, 230], "AtelierRegenerateLayer": [340, 340],
    "AtelierLayerSelect": [260, 80], "AtelierSaveLayers": [340, 360], "AtelierLoadLayers": [340, 110],
}
LAYER_GROWS_BY = {"AtelierGenerateLayers": 220, "AtelierRegenerateLayer": 220}
base.UI_SIZES.update(LAYER_UI_SIZES)
base.GROWS_BY.update(LAYER_GROWS_BY)

SIGMA = {"model_name": "PixArt-Sigma-XL-2-1024-MS.pth", "dtype": "auto", "variant": "auto"}
T5 = {"t5_name": "t5xxl_fp16.safetensors", "dtype": "auto", "device": "auto"}
VAE = {"vae_name": "sdxl_vae.safetensors"}
SAMPLING = {"steps": 20, "cfg": 4.5, "sampler_name": "dpmpp_2m"}
STICKERS = ("a cute cartoon cat", "a smiling slice of watermelon", "a tiny green cactus in a pot",
            "a rainbow with clouds", "a happy coffee cup", "a yellow rubber duck")


def _poster_layout() -> tuple[dict, int]:
    """The poster layout at 1024x1024: pixart_core.testing.layer_inputs.POSTER_LAYOUT (the tiny PSD make-tiny
    writes for the regenerate workflow) scaled up 4x, so both share names and prompts."""
    layer_inputs = importlib.import_module(f"{base.load_pack().__name__}.pixart_core.testing.layer_inputs")
    small = layer_inputs.POSTER_LAYOUT
    scale = 1024 // small["width"]
    layers = [{**layer, "box": [v * scale for v in layer["box"]]} for layer in small["layers"]]
    return {**small, "width": 1024, "height": 1024, "layers": layers}, scale


def _layout_node(node_id: int, layout: dict) -> Node:
    return Node(node_id, "AtelierLayout", {
        "layout": json.dumps({"layers": layout["layers"]}, indent=2), "width": layout["width"],
        "height": layout["height"], "prompt": layout["prompt"], "background": layout["background"]["prompt"]})


def _loaders() -> list[Node]:
    return [Node(1, "AtelierModelLoader", SIGMA), Node(2, "AtelierT5Loader", T5), Node(3, "VAELoader", VAE)]


def _sticker_layout() -> dict:
    """Six stickers in a 3 x 2 grid on a 1024x768 sheet."""
    layers = []
    for index, prompt in enumerate(STICKERS):
        column, row = index % 3, index // 3
        x0, y0 = 32 + 320 * column, 48 + 352 * row
        layers.append({"name": f"sticker {index + 1}", "prompt": f"{prompt} sticker, white outline",
                       "box": [x0, y0, x0 + 320, y0 + 320]})
    return {"width": 1024, "height": 768, "prompt": "a sheet of six cute die-cut stickers, flat colours, vector art",
            "background": {"prompt": "plain white paper"}, "layers": layers}


def graphs() -> dict[str, list[Node]]:
    poster = [
        _layout_node(4, _poster_layout()[0]),
        *_loaders(),
        Node(5, "AtelierGenerateLayers", {"seed": 42, **SAMPLING},
             {"model": (1, 0), "t5": (2, 0), "vae": (3, 0), "layout": (4, 0)}),
        Node(6, "AtelierSaveLayers", {"format": "psd", "filename_prefix": "PixArt-poster"}, {"stack": (5, 0)}),
        Node(7, "PreviewImage", {}, {"images": (5, 1)}),
    ]
    sticker_sheet = [
        _layout_node(4, _sticker_layout()),
        *_loaders(),
        Node(5, "AtelierGenerateLayers", {"seed": 7, **SAMPLING},
             {"model": (1, 0), "t5": (2, 0), "vae": (3, 0), "layout": (4, 0)}),
        Node(6, "AtelierSaveLayers", {"format": "ora", "filename_prefix": "PixArt-stickers"}, {"stack": (5, 0)}),
        Node(7, "AtelierSaveLayers", {"format": "png folder", "filename_prefix": "PixArt-stickers"},
             {"stack": (5, 0)}),
        Node(8, "PreviewImage", {}, {"images": (5, 1)}),
    ]
    regenerate = [
        *_loaders(),
        Node(4, "AtelierLoadLayers", {"file": "pixart_layers_poster.psd"}),
        Node(5, "AtelierRegenerateLayer", {"layer": "fox", "prompt": "a grey wolf sitting, seen from the side",
                                           "seed": 123, **SAMPLING},
             {"model": (1, 0), "t5": (2, 0), "vae": (3, 0), "stack": (4, 0)}),
        Node(6, "AtelierSaveLayers", {"format": "psd", "filename_prefix": "PixArt-regenerated"}, {"stack": (5, 0)}),
        Node(7, "AtelierLayerSelect", {"layer": "fox"}, {"stack": (5, 0)}),
        Node(8, "PreviewImage", {}, {"images": (7, 0)}),
    ]
    return {"pixart_layers_poster": poster, "pixart_layers_sticker_sheet": sticker_sheet,
            "pixart_layers_regenerate": regenerate}


to_ui, to_api = base.to_ui, base.to_api


def main() -> None:
    for name, nodes in graphs().items():
        for path, data in ((ROOT / "workflows" / f"{name}.json", to_ui(nodes)),
                           (ROOT / "workflows" / "api" / f"{name}.json", to_api(nodes))):
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            tmp.replace(path)


if __name__ == "__main__":
    main()
