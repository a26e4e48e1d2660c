"""Input files of the layered example workflows, for `make-tiny` (comfyui/input/): a small layered PSD shaped like
the poster workflow's output (same layer names and prompts), drawn with flat shapes instead of a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..layers import Layer, LayerStack, parse_layout

POSTER_PSD = "pixart_layers_poster.psd"  # the name workflows/pixart_layers_regenerate.json loads
POSTER_SIZE = 256
# the poster workflow's layout (workflows/pixart_layers_poster.json) at 256x256: names and prompts bottom to top
POSTER_LAYOUT = {
    "width": POSTER_SIZE, "height": POSTER_SIZE,
    "prompt": "a vintage travel poster of a fox in the hills at sunset, flat colours, screen print",
    "background": {"prompt": "rolling green hills under an orange sunset sky, flat colours"},
    "layers": [
        {"name": "sun", "prompt": "a big round setting sun", "box": [144, 24, 224, 104]},
        {"name": "birds", "prompt": "a flock of small black birds flying", "box": [24, 32, 120, 88]},
        {"name": "fox", "prompt": "a red fox sitting, seen from the side", "box": [56, 112, 184, 248]},
    ],
}


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGBA", (POSTER_SIZE, POSTER_SIZE), (0, 0, 0, 0))
    return image, ImageDraw.Draw(image)


def poster_stack() -> LayerStack:
    """A 256x256 stack with the poster's layers: gradient sky and hills, sun disc, bird strokes, fox shape."""
    layout = parse_layout(POSTER_LAYOUT)
    y = np.linspace(0.0, 1.0, POSTER_SIZE)[:, None, None]  # [H, 1, 1]
    sky = (1 - y) * np.array([250, 150, 60]) + y * np.array([240, 90, 80])  # [H, 1, 3]
    background = np.broadcast_to(sky, (POSTER_SIZE, POSTER_SIZE, 3)).astype(np.uint8).copy()  # [H, W, 3]
    background[160:] = (70, 140, 60)
    images = [Image.fromarray(background, "RGB").convert("RGBA")]
    sun, draw = _canvas()
    draw.ellipse((152, 32, 216, 96), fill=(255, 220, 90, 255))
    birds, draw = _canvas()
    for x, y0 in ((32, 48), (64, 40), (92, 60)):
        draw.line((x, y0, x + 8, y0 + 6, x + 16, y0), fill=(20, 20, 20, 255), width=3)
    fox, draw = _canvas()
    draw.ellipse((72, 160, 168, 240), fill=(215, 100, 30, 255))
    draw.ellipse((112, 120, 168, 176), fill=(215, 100, 30, 255))
    draw.polygon((120, 128, 128, 112, 136, 128), fill=(215, 100, 30, 255))
    images += [sun, birds, fox]
    layers = [Layer("background", images[0], (0, 0, POSTER_SIZE, POSTER_SIZE), layout.background_prompt)]
    layers += [Layer(spec.name, image, spec.box, spec.prompt) for spec, image in zip(layout.layers, images[1:])]
    return LayerStack(layers, POSTER_SIZE, POSTER_SIZE, layout=layout)


def write_layer_inputs(folder: Path) -> dict[str, Path]:
    """Write the layered workflows' input files into `folder` (ComfyUI's input folder); returns {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    return {POSTER_PSD: poster_stack().save(folder / POSTER_PSD)}
