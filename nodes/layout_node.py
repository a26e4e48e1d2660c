"""Layout node: the region layout of a layered image (boxes drawn in the canvas editor, web/region_editor.js).

The `layout` widget holds JSON with the foreground layers, bottom to top, as the editor writes it:

    {"layers": [{"name": "cat", "prompt": "a ginger cat", "box": [x0, y0, x1, y1]}, ...]}

(optionally "negative"). The node's width, height, prompt and background widgets fill in the rest, replacing
any such keys in the JSON, and `pixart_core.layers.layout.parse_layout` validates the whole.
"""

from __future__ import annotations

import json

from ..pixart_core.layers.layout import Layout, parse_layout
from .types import CATEGORY

PIXART_LAYOUT = "PIXART_LAYOUT"
SIZE_STEP = 16  # latent /8 and patch 2: PixArt sizes are multiples of 16
MAX_SIZE = 4096
DEFAULT_SIZE = 1024


def layers_widget_text(layers: list[dict]) -> str:
    """The `layout` widget text for layers [{"name", "prompt", "box"}], one line per layer, formatted as the canvas
    editor writes it (web/region_model.js serializeLayout), for workflows built in code."""
    def row(layer: dict) -> str:
        box = ", ".join(str(v) for v in layer["box"])
        return (f'  {{"name": {json.dumps(layer["name"], ensure_ascii=False)}, '
                f'"prompt": {json.dumps(layer["prompt"], ensure_ascii=False)}, "box": [{box}]}}')
    return '{"layers": [\n' + ",\n".join(row(layer) for layer in layers) + '\n]}' if layers else '{"layers": []}'


DEFAULT_LAYOUT = layers_widget_text([{"name": "subject", "prompt": "a red fox sitting", "box": [256, 256, 768, 960]}])


def _check_size(field: str, value) -> int:
    """A canvas side: an integer multiple of 16 in 16..4096 (ComfyUI skips its own min/max checks for the
    inputs VALIDATE_INPUTS takes, so they are checked here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: must be an integer number of pixels, got {value!r}")
    if not SIZE_STEP <= value <= MAX_SIZE:
        raise ValueError(f"{field}: {value} is outside {SIZE_STEP}..{MAX_SIZE}; choose a size in that range")
    if value % SIZE_STEP:
        lower = value - value % SIZE_STEP
        raise ValueError(f"{field}: {value} is not a multiple of {SIZE_STEP}; use {lower} or {lower + SIZE_STEP}")
    return value


def _layers_json(layout) -> dict:
    """The widget's JSON as a dict: an object with "layers" (a bare list of layers is accepted too)."""
    if isinstance(layout, str):
        if not layout.strip():
            raise ValueError("layout: empty; draw a box on the Layout node's canvas or type the layers JSON")
        try:
            layout = json.loads(layout)
        except json.JSONDecodeError as err:
            raise ValueError(f"layout: invalid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                             "fix the text or redraw the boxes") from None
    if isinstance(layout, list):
        layout = {"layers": layout}
    if not isinstance(layout, dict):
        raise ValueError(f"layout: must be a JSON object such as {{\"layers\": [...]}}, got {type(layout).__name__}")
    if layout.get("layers") == []:
        raise ValueError("layout.layers: empty; draw at least one box on the Layout node's canvas")
    return layout


def build_layout(layout, width: int, height: int, prompt: str, background: str) -> Layout:
    """The validated Layout from the widget values; raises ValueError with one line naming the field."""
    data = dict(_layers_json(layout))
    data["width"] = _check_size("width", width)
    data["height"] = _check_size("height", height)
    data["prompt"] = prompt
    data["background"] = {"prompt": background} if background and background.strip() else {}
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt: empty; give the global prompt that describes the whole picture")
    return parse_layout(data)


class AtelierLayout:
    """Region layout for layered generation: boxes with prompts on a width x height canvas."""

    DESCRIPTION = ("The region layout of a layered picture. Draw boxes on the node's canvas (drag to draw, drag to "
                   "move, corner handles to resize; name, prompt, order and delete in the box list); the layout JSON "
                   "follows the boxes and the boxes follow the JSON. Width, height, the global prompt and the "
                   "background prompt complete it. An invalid layout is refused before anything runs.")
    CATEGORY = f"{CATEGORY}/layers"
    FUNCTION = "build"
    RETURN_TYPES = (PIXART_LAYOUT,)
    RETURN_NAMES = ("layout",)
    OUTPUT_TOOLTIPS = ("The validated layout (boxes bottom to top) for PixArt Generate Layers.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "layout": ("STRING", {"multiline": True, "default": DEFAULT_LAYOUT,
                                  "tooltip": "Layers bottom to top as JSON: {\"layers\": [{\"name\", \"prompt\", "
                                             "\"box\": [x0, y0, x1, y1] in pixels}]}. Kept in sync with the "
                                             "canvas editor above."}),
            "width": ("INT", {"default": DEFAULT_SIZE, "min": SIZE_STEP, "max": MAX_SIZE, "step": SIZE_STEP,
                              "tooltip": "Canvas width in pixels (multiple of 16)."}),
            "height": ("INT", {"default": DEFAULT_SIZE, "min": SIZE_STEP, "max": MAX_SIZE, "step": SIZE_STEP,
                               "tooltip": "Canvas height in pixels (multiple of 16)."}),
            "prompt": ("STRING", {"multiline": True, "default": "a poster, flat colours",
                                  "tooltip": "The global prompt: the whole picture, shared by every layer."}),
            "background": ("STRING", {"multiline": False, "default": "",
                                      "tooltip": "The background layer's prompt; empty = the global prompt."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, layout, width=None, height=None, prompt=None, background=None):
        """True, or the one-line reason the layout is refused (ComfyUI shows it on the node before running).
        Inputs fed by links arrive as None here; their checks wait for `build`."""
        try:
            data = dict(_layers_json(layout))
            if width is not None:
                _check_size("width", width)
            if height is not None:
                _check_size("height", height)
            if prompt is not None and not prompt.strip():
                raise ValueError("prompt: empty; give the global prompt that describes the whole picture")
            if width is None or height is None or prompt is None:
                return True  # linked: checked with the real values when the node runs
            build_layout(data, width, height, prompt, background or "")
        except ValueError as err:
            return str(err)
        return True

    def build(self, layout, width, height, prompt, background):
        return (build_layout(layout, width, height, prompt, background),)
