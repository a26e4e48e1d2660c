"""A layer stack: canvas-sized RGBA layers, bottom to top, their exact composite, replacement and files.

Files (chosen by `save`'s extension; `load` sniffs the content):
    .psd                 Photoshop, via psd-tools (`psd_file.py`)
    .ora                 OpenRaster (`ora_file.py`)
    a folder             PNGs + layout.json + composite.png (`folder_file.py`); a path without extension or an
                         existing folder
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .layout import BACKGROUND_NAME, Layout, LayerSpec, parse_layout, retold
from .manifest import layout_from_manifest, matches
from .pixels import alpha_bounds, alpha_over

logger = logging.getLogger(__name__)

_PSD_MAGIC = b"8BPS"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True, eq=False)
class Layer:
    """One layer: `image` is PIL RGBA at canvas size (straight alpha); `box` (x0, y0, x1, y1) in pixels."""

    name: str
    image: Image.Image = field(repr=False)
    box: tuple[float, float, float, float]
    prompt: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise ValueError(f"Layer name: must be a text, got {type(self.name).__name__}")
        if not isinstance(self.image, Image.Image) or self.image.mode != "RGBA":
            got = self.image.mode if isinstance(self.image, Image.Image) else type(self.image).__name__
            raise ValueError(f"Layer {self.name!r} image: must be a PIL image in mode RGBA, got {got} "
                             f"(use image.convert('RGBA'))")
        box = tuple(self.box) if isinstance(self.box, (list, tuple)) else ()
        if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                    and math.isfinite(v) for v in box):
            raise ValueError(f"Layer {self.name!r} box: must be 4 numbers (x0, y0, x1, y1), got {self.box!r}")
        object.__setattr__(self, "box", box)
        if not isinstance(self.prompt, str):
            raise ValueError(f"Layer {self.name!r} prompt: must be a text, got {type(self.prompt).__name__}")


class LayerStack:
    """Layers bottom to top (index 0 the opaque background), all at `width` x `height`; `layout` if generated.

    Treat a stack as immutable: `replace` returns a new stack, and `composite` is computed once and cached.
    """

    def __init__(self, layers, width: int, height: int, layout: Layout | None = None):
        layers = tuple(layers)
        if not layers:
            raise ValueError("layers: empty; a stack needs at least the background layer")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ValueError(f"layers[{index}]: must be a Layer, got {type(layer).__name__}")
            if layer.image.size != (width, height):
                raise ValueError(f"layers[{index}] ({layer.name!r}) image: size {layer.image.size[0]}x"
                                 f"{layer.image.size[1]} differs from the {width}x{height} canvas")
        if layout is not None and (layout.width, layout.height) != (width, height):
            raise ValueError(f"layout: {layout.width}x{layout.height} differs from the {width}x{height} canvas")
        self.layers = layers
        self.width = width
        self.height = height
        self.layout = layout

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        names = ", ".join(repr(layer.name) for layer in self.layers)
        return f"LayerStack({self.width}x{self.height}, [{names}])"

    @functools.cached_property
    def composite(self) -> Image.Image:
        """PIL RGB: the straight-alpha "over" of the layers, bottom to top, computed in float and rounded."""
        return alpha_over([layer.image for layer in self.layers], self.width, self.height)

    def replace(self, index: int, layer: Layer) -> LayerStack:
        """A new stack with `layer` at `index`; every other Layer is the same object (same pixels).

        The layout, when present, takes the new layer's name, prompt and box (index 0: the background prompt);
        a foreground's old prompt is retold in the global prompt (`layout.retold`).
        """
        if isinstance(index, bool) or not isinstance(index, int) or not -len(self.layers) <= index < len(self.layers):
            raise ValueError(f"index: {index!r} is not a layer index; the stack has {len(self.layers)} layers "
                             f"(0 is the background)")
        index %= len(self.layers)
        if not isinstance(layer, Layer):
            raise ValueError(f"layer: must be a Layer, got {type(layer).__name__}")
        layers = list(self.layers)
        layers[index] = layer
        return LayerStack(layers, self.width, self.height, layout=self._layout_with(index, layer))

    def _layout_with(self, index: int, layer: Layer) -> Layout | None:
        if self.layout is None:
            return None
        layout = self.layout
        if index == 0:
            return Layout(width=layout.width, height=layout.height, prompt=layout.prompt, layers=layout.layers,
                          negative=layout.negative, background_prompt=layer.prompt or layout.background_prompt)
        specs = list(layout.layers)
        if index - 1 >= len(specs):
            return layout
        prompt = layer.prompt or specs[index - 1].prompt
        scene = retold(layout.prompt, specs[index - 1].prompt, prompt)
        specs[index - 1] = LayerSpec(name=layer.name, prompt=prompt, box=layer.box)
        updated = Layout(width=layout.width, height=layout.height, prompt=scene, layers=tuple(specs),
                         negative=layout.negative, background_prompt=layout.background_prompt)
        try:
            return parse_layout(updated)
        except ValueError as err:
            raise ValueError(f"layer: does not fit the stack's layout ({err})") from None

    def save(self, path: str | Path) -> Path:
        """Write the stack: `.psd`, `.ora`, or a folder (a path without extension, or an existing folder)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".psd":
            from .psd_file import write_psd

            return write_psd(self, path)
        if suffix == ".ora":
            from .ora_file import write_ora

            return write_ora(self, path)
        if path.is_dir() or not suffix:
            from .folder_file import write_folder

            return write_folder(self, path)
        raise ValueError(f"path {path}: unknown extension {path.suffix!r}; save as .psd, .ora, or a folder name "
                         f"without extension")

    @classmethod
    def load(cls, path: str | Path) -> LayerStack:
        """Read a stack saved by `save`, or a PSD / ORA made elsewhere (groups flattened, hidden layers skipped)."""
        path = Path(path)
        if path.is_dir():
            from .folder_file import read_folder

            return read_folder(path)
        try:
            with open(path, "rb") as handle:
                magic = handle.read(4)
        except OSError as err:
            raise OSError(f"path {path}: cannot read the layer file ({err.strerror or err})") from None
        if magic == _PSD_MAGIC:
            from .psd_file import read_psd

            return read_psd(path)
        if magic == _ZIP_MAGIC:
            from .ora_file import read_ora

            return read_ora(path)
        raise ValueError(f"path {path}: not a PSD, ORA or layer folder; give a .psd or .ora file or a folder "
                         f"saved by LayerStack.save")


def assemble(named_images: list[tuple[str, Image.Image]], width: int, height: int, manifest: dict | None,
             source: str) -> LayerStack:
    """A stack from canvas-sized RGBA images (bottom to top), with names, prompts and boxes from `manifest`
    when its names match the images', else boxes from the alpha bounds and empty prompts."""
    if not named_images:
        raise ValueError(f"{source}: no visible layers to load")
    names = [name for name, _ in named_images]
    use_manifest = matches(manifest, names) and (manifest["width"], manifest["height"]) == (width, height)
    if manifest is not None and not use_manifest:
        logger.info("%s: layers differ from the stored manifest; prompts and boxes not restored", source)
    layers = []
    for index, (name, image) in enumerate(named_images):
        if use_manifest:
            entry = manifest["layers"][index]
            layers.append(Layer(name=name, image=image, box=tuple(entry["box"]), prompt=entry.get("prompt", "")))
            continue
        bounds = alpha_bounds(image) if index > 0 else None
        layers.append(Layer(name=name, image=image, box=bounds or (0, 0, width, height)))
    layout = layout_from_manifest(manifest, source) if use_manifest else None
    if layout is not None and ((layout.width, layout.height) != (width, height)
                               or [BACKGROUND_NAME] + [spec.name for spec in layout.layers] != names):
        layout = None
    return LayerStack(layers, width, height, layout=layout)
