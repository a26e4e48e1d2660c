"""Region layouts for layered generation: parse and validate before anything runs.

A layout is a dict or a JSON string:

    {"width": 1024, "height": 768, "prompt": "global scene", "negative": "",
     "background": {"prompt": "..."},
     "layers": [{"name": "cat", "prompt": "a ginger cat", "box": [x0, y0, x1, y1]}, ...]}

Layers are listed bottom to top; boxes are pixels on the canvas, x0 < x1 <= width and y0 < y1 <= height.
Required: width, height (positive integers), prompt, layers (1 to 64 entries, each with a prompt and a box).
Defaults for the optional fields:
    negative            ""
    background.prompt   the global prompt
    layers[i].name      "layer {i + 1}" (the layer's index in the stack, where index 0 is the background)
Unknown fields are refused, so a misspelt key ("promt") is reported rather than ignored. The name
"background" is reserved for the background layer (stack index 0).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

MAX_LAYERS = 64
BACKGROUND_NAME = "background"
_TOP_FIELDS = {"width", "height", "prompt", "negative", "background", "layers"}
_LAYER_FIELDS = {"name", "prompt", "box"}
_BACKGROUND_FIELDS = {"prompt"}


@dataclass(frozen=True)
class LayerSpec:
    """One foreground layer of a layout: its name, caption and box (x0, y0, x1, y1) in canvas pixels."""

    name: str
    prompt: str
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        return {"name": self.name, "prompt": self.prompt, "box": list(self.box)}


@dataclass(frozen=True)
class Layout:
    """A validated layout; `layers` run bottom to top and exclude the background."""

    width: int
    height: int
    prompt: str
    layers: tuple[LayerSpec, ...]
    negative: str = ""
    background_prompt: str = ""

    def to_dict(self) -> dict:
        """The layout in its JSON form, with every default written out."""
        return {"width": self.width, "height": self.height, "prompt": self.prompt, "negative": self.negative,
                "background": {"prompt": self.background_prompt},
                "layers": [layer.to_dict() for layer in self.layers]}

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text that `parse_layout` reads back to an equal `Layout`."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_fields(where: str, mapping: dict, allowed: set[str]) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; allowed fields are {', '.join(sorted(allowed))}")


def _text(where: str, value, required: bool, default: str = "") -> str:
    """A prompt-like string field; `required` ones must be present and not blank."""
    if value is None:
        if required:
            raise ValueError(f"{where}: missing; give a non-empty text")
        return default
    if not isinstance(value, str):
        raise ValueError(f"{where}: must be a text, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{where}: empty; give a non-empty text")
    return value


def _size(field: str, value) -> int:
    if value is None:
        raise ValueError(f"layout.{field}: missing; give a positive integer number of pixels")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"layout.{field}: must be a positive integer number of pixels, got {value!r}")
    if value <= 0:
        raise ValueError(f"layout.{field}: must be a positive integer number of pixels, got {value}")
    return value


def _box(where: str, value, width: int, height: int) -> tuple[float, float, float, float]:
    field = f"{where}.box"
    if value is None:
        raise ValueError(f"{field}: missing; give [x0, y0, x1, y1] in pixels")
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(_is_number(v) for v in value):
        raise ValueError(f"{field}: must be 4 numbers [x0, y0, x1, y1] in pixels, got {value!r}")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"{field}: must be finite numbers, got {list(value)}")
    x0, y0, x1, y1 = value
    if x1 <= x0:
        raise ValueError(f"{field}: x1 ({x1}) must be greater than x0 ({x0})")
    if y1 <= y0:
        raise ValueError(f"{field}: y1 ({y1}) must be greater than y0 ({y0})")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(f"{field}: {list(value)} lies outside the {width}x{height} canvas "
                         f"(need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height})")
    return (x0, y0, x1, y1)


def _layer(index: int, entry, width: int, height: int) -> LayerSpec:
    where = f"layout.layers[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be an object with name, prompt and box, got {type(entry).__name__}")
    name = entry.get("name")
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}.name: must be a non-empty text, got {name!r}")
        where = f"{where} ({name!r})"
    _check_fields(where, entry, _LAYER_FIELDS)
    prompt = _text(f"{where}.prompt", entry.get("prompt"), required=True)
    box = _box(where, entry.get("box"), width, height)
    return LayerSpec(name=name if name is not None else f"layer {index + 1}", prompt=prompt, box=box)


def _decode(layout) -> dict:
    if isinstance(layout, (bytes, bytearray)):
        layout = layout.decode("utf-8", errors="replace")
    if isinstance(layout, str):
        try:
            layout = json.loads(layout)
        except json.JSONDecodeError as err:
            raise ValueError(f"layout: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(layout, dict):
        raise ValueError(f"layout: must be a JSON object (dict) with width, height, prompt and layers, "
                         f"got {type(layout).__name__}")
    return layout


def parse_layout(layout: dict | str | Layout) -> Layout:
    """Validate a layout (dict, JSON text or `Layout`) and fill in the defaults.

    Raises ValueError naming the layer (index and name) and the field for: invalid JSON, a missing prompt, a box
    that is not 4 numbers or lies outside the canvas, x1 <= x0 or y1 <= y0, a non-integer or non-positive size,
    no layers or more than 64, duplicate names and unknown fields.
    """
    if isinstance(layout, Layout):
        layout = layout.to_dict()  # re-validate: a Layout may have been built by hand
    data = _decode(layout)
    _check_fields("layout", data, _TOP_FIELDS)
    width = _size("width", data.get("width"))
    height = _size("height", data.get("height"))
    prompt = _text("layout.prompt", data.get("prompt"), required=True)
    negative = _text("layout.negative", data.get("negative"), required=False)
    background = data.get("background")
    if background is None:
        background = {}
    if not isinstance(background, dict):
        raise ValueError(f"layout.background: must be an object such as {{\"prompt\": \"...\"}}, "
                         f"got {type(background).__name__}")
    _check_fields("layout.background", background, _BACKGROUND_FIELDS)
    background_prompt = _text("layout.background.prompt", background.get("prompt"), required=False, default=prompt)
    entries = data.get("layers")
    if entries is None:
        raise ValueError("layout.layers: missing; give a list of 1 to 64 layers, bottom to top")
    if not isinstance(entries, list):
        raise ValueError(f"layout.layers: must be a list of layers, got {type(entries).__name__}")
    if not entries:
        raise ValueError("layout.layers: empty; give 1 to 64 layers, bottom to top")
    if len(entries) > MAX_LAYERS:
        raise ValueError(f"layout.layers: {len(entries)} layers; at most {MAX_LAYERS} are supported")
    layers = tuple(_layer(index, entry, width, height) for index, entry in enumerate(entries))
    seen = {BACKGROUND_NAME: "the background"}
    for index, layer in enumerate(layers):
        if layer.name in seen:
            raise ValueError(f"layout.layers[{index}] ({layer.name!r}).name: duplicate of {seen[layer.name]}; "
                             f"give every layer its own name")
        seen[layer.name] = f"layout.layers[{index}]"
    return Layout(width=width, height=height, prompt=prompt, layers=layers, negative=negative,
                  background_prompt=background_prompt)


def retold(prompt: str, old: str, new: str) -> str:
    """`prompt` with the phrase `old` (whole words, any case) replaced by `new`: a layer given a new prompt is
    retold in the global prompt too, so the scene no longer asks for what the layer was ("a cat and a dog in a
    park", layer "a dog" -> "a fox": "a cat and a fox in a park"). Unchanged when `old` does not occur."""
    old = old.strip()
    if not old or old.lower() == new.strip().lower():
        return prompt
    pattern = re.compile(r"(?<!\w)" + re.escape(old) + r"(?!\w)", re.IGNORECASE)
    return pattern.sub(lambda _: new.strip(), prompt)
