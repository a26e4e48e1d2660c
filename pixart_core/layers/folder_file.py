"""A layer stack as a folder: one full-canvas RGBA PNG per layer, `composite.png` and `layout.json`.

`layout.json` is the layer-stack manifest (see `manifest.py`): {"format", "version", "width", "height",
"layers": [{"name", "prompt", "box", "file"}] bottom to top, "composite", "layout"}; its "layout" entry is the
generation layout (`parse_layout` reads it) or null. Layer files are named `NNN_<name>.png` (index, then the
name reduced to letters, digits, - and _). The folder is written beside the target and moved into place; an
existing folder is replaced only when it holds nothing but such files.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from .atomic_io import write_folder_atomic
from .manifest import manifest_json, read_manifest

MANIFEST_NAME = "layout.json"
COMPOSITE_NAME = "composite.png"
_LAYER_FILE = re.compile(r"^\d{3}_[A-Za-z0-9_-]*\.png$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def layer_file_name(index: int, name: str) -> str:
    slug = _UNSAFE.sub("-", name).strip("-")[:40]
    return f"{index:03d}_{slug}.png"


def _ours(path: Path) -> bool:
    """Whether an existing folder holds only files a previous `write_folder` made (so it may be replaced)."""
    return all(child.is_file() and (child.name in (MANIFEST_NAME, COMPOSITE_NAME) or _LAYER_FILE.match(child.name))
               for child in path.iterdir())


def write_folder(stack, path: str | Path) -> Path:
    """Write `stack` as a folder at `path`; returns the path."""
    files = [layer_file_name(index, layer.name) for index, layer in enumerate(stack.layers)]

    def fill(folder: Path) -> None:
        for layer, name in zip(stack.layers, files):
            layer.image.save(folder / name, format="PNG", compress_level=4)
        stack.composite.save(folder / COMPOSITE_NAME, format="PNG", compress_level=4)
        (folder / MANIFEST_NAME).write_text(manifest_json(stack, files=files, composite=COMPOSITE_NAME),
                                            encoding="utf-8")

    return write_folder_atomic(path, fill, _ours, "layer folder")


def read_folder(path: str | Path):
    """A LayerStack from a folder written by `write_folder`; ValueError naming the file that is wrong."""
    from .stack import assemble

    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    source = f"path {manifest_path}"
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"path {path}: folder has no {MANIFEST_NAME}; not a layer folder saved by "
                         f"LayerStack.save") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{source}: cannot read the manifest ({err})") from None
    manifest = read_manifest(text, source)
    width, height = manifest["width"], manifest["height"]
    named_images = []
    for index, entry in enumerate(manifest["layers"]):
        name = entry.get("file")
        if not isinstance(name, str) or not _LAYER_FILE.match(name):
            raise ValueError(f"{source}: layers[{index}].file must be a file name like 000_name.png in the folder, "
                             f"got {name!r}")
        file = path / name
        try:
            with Image.open(file) as image:
                image.load()
                rgba = image.convert("RGBA")
        except (OSError, Image.DecompressionBombError) as err:
            raise ValueError(f"path {file}: not a readable PNG layer ({err})") from None
        if rgba.size != (width, height):
            raise ValueError(f"path {file}: size {rgba.size[0]}x{rgba.size[1]} differs from the {width}x{height} "
                             f"canvas in {MANIFEST_NAME}")
        named_images.append((entry["name"], rgba))
    return assemble(named_images, width, height, manifest, f"path {path}")
