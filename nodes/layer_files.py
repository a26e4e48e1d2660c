"""Layer stack files in ComfyUI's folders: Save Layers (PSD, OpenRaster or a PNG folder in the output folder, the
workflow embedded), Load Layers (from the input folder), and the small layer thumbnails sent to the UI.

The stack is written by pixart_core (`LayerStack.save`) into a hidden name beside the target, the workflow is
added there, and only then is it moved to its final name, so a failure leaves nothing behind. Where the
workflow goes: PSD, into the XMP metadata packet beside the layer manifest (Photoshop keeps XMP on re-save);
ORA, as `pixart-atelier/workflow.json` and `prompt.json` inside the zip (readers skip files they do not know);
PNG folder, as `prompt` / `workflow` text chunks in every PNG, as core Save Image writes them (drop
composite.png on ComfyUI to get the workflow back). Outside ComfyUI the folders are $PIXART_ATELIER_OUTPUT
(else ./output), $PIXART_ATELIER_INPUT (else ./input) and $PIXART_ATELIER_TEMP (else the system temp folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

from . import host
from .layer_nodes import (PIXART_LAYERS, STACK_OUTPUT_TOOLTIPS, STACK_RETURN_NAMES, STACK_RETURN_TYPES, check_stack,
                          stack_outputs)
from .rgba_save import workflow_metadata as png_metadata
from .rgba_save import save_paths
from .types import CATEGORY

log = logging.getLogger(__name__)

FORMATS = {"psd": ".psd", "ora": ".ora", "png folder": ""}
LAYER_FILE_SUFFIXES = (".psd", ".ora")
FOLDER_MANIFEST = "layout.json"  # pixart_core/layers/folder_file.py MANIFEST_NAME
ORA_WORKFLOW_DIR = "pixart-atelier"  # beside pixart_core/layers/ora_file.py MANIFEST_NAME
XMP_TAGS = {"prompt": "comfyuiPrompt", "workflow": "comfyuiWorkflow"}  # in the stack manifest's XMP namespace
THUMB_SIZE = 160  # px, longest side of a layer thumbnail


# ---------------------------------------------------------------------------------------------------- folders


def input_dir() -> Path:
    if host.in_comfyui():
        return Path(host.comfy_module("folder_paths").get_input_directory())
    return Path(os.environ.get("PIXART_ATELIER_INPUT") or "input").resolve()


def temp_dir() -> Path:
    if host.in_comfyui():
        folder = Path(host.comfy_module("folder_paths").get_temp_directory())
    else:
        folder = Path(os.environ.get("PIXART_ATELIER_TEMP") or Path(tempfile.gettempdir()) / "pixart_atelier")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _target(prefix: str, suffix: str, width: int, height: int) -> tuple[Path, str]:
    """(final path, sub-folder) for a new layer file named like core Save Image: `<prefix>_00001_<suffix>`."""
    stem = os.path.basename(os.path.normpath(prefix))
    if not prefix.strip() or not stem or stem.startswith("."):
        raise ValueError(f"filename_prefix '{prefix}': give a file name (not empty, not starting with '.')")
    folder, stem, counter, subfolder = save_paths(prefix, width, height, numbered=r"_(\d+)_")
    while (folder / f"{stem}_{counter:05}_{suffix}").exists():
        counter += 1
    return folder / f"{stem}_{counter:05}_{suffix}", subfolder


# ------------------------------------------------------------------------------------------ workflow embedding


def _embed_in_pngs(folder: Path, text: dict[str, str]) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    for png in sorted(folder.glob("*.png")):
        with Image.open(png) as image:
            image.load()
            pixels = image.copy()
        pixels.save(png, format="PNG", pnginfo=info, compress_level=4)


def _embed_in_ora(path: Path, text: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "a") as archive:
        for key, value in text.items():
            archive.writestr(f"{ORA_WORKFLOW_DIR}/{key}.json", value.encode("utf-8"),
                             compress_type=zipfile.ZIP_DEFLATED)


def _embed_in_psd(path: Path, text: dict[str, str]) -> None:
    from psd_tools import PSDImage
    from psd_tools.constants import Resource
    from psd_tools.psd.image_resources import ImageResource

    psd = PSDImage.open(path)
    packet = psd.image_resources.get_data(Resource.XMP_METADATA)
    properties = "".join(f"<pa:{XMP_TAGS[key]}>{escape(value)}</pa:{XMP_TAGS[key]}>"
                         for key, value in text.items() if key in XMP_TAGS)
    end = b"</rdf:Description>"
    if not isinstance(packet, bytes) or end not in packet or b"xmlns:pa=" not in packet:
        raise ValueError(f"path {path}: the PSD written has no layer-stack XMP packet to carry the workflow")
    packet = packet.replace(end, properties.encode("utf-8") + end, 1)
    psd.image_resources[Resource.XMP_METADATA] = ImageResource(key=Resource.XMP_METADATA, data=packet)
    with open(path, "wb") as handle:
        psd.save(handle)


def read_embedded_workflow(path: str | Path) -> dict[str, object]:
    """{"prompt": ..., "workflow": ...} that Save Layers embedded in a .psd, .ora or PNG folder ({} if none)."""
    import xml.etree.ElementTree as ElementTree

    path = Path(path)
    found: dict[str, str] = {}
    if path.is_dir():
        from PIL import Image

        with Image.open(path / "composite.png") as image:
            found = {key: image.text[key] for key in ("prompt", "workflow") if key in image.text}
    elif path.suffix.lower() == ".ora":
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            found = {key: archive.read(f"{ORA_WORKFLOW_DIR}/{key}.json").decode("utf-8")
                     for key in ("prompt", "workflow") if f"{ORA_WORKFLOW_DIR}/{key}.json" in names}
    else:
        from psd_tools import PSDImage
        from psd_tools.constants import Resource

        from ..pixart_core.layers.manifest import XMP_NAMESPACE

        packet = PSDImage.open(path).image_resources.get_data(Resource.XMP_METADATA)
        root = ElementTree.fromstring(packet) if isinstance(packet, bytes) else None
        for key, tag in XMP_TAGS.items():
            node = root.find(f".//{{{XMP_NAMESPACE}}}{tag}") if root is not None else None
            if node is not None and node.text:
                found[key] = node.text
    return {key: json.loads(value) for key, value in found.items()}


def save_stack(stack, target: Path, text: dict[str, str] | None) -> Path:
    """Write `stack` to `target` (.psd, .ora or a folder) with `text` embedded; nothing is left on failure."""
    suffix = target.suffix.lower() if target.suffix.lower() in LAYER_FILE_SUFFIXES else ""
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.partial{suffix}")
    try:
        if not suffix:
            temp.mkdir()  # an existing empty folder: LayerStack.save writes the PNG folder form into it
        stack.save(temp)
        if text:
            {".psd": _embed_in_psd, ".ora": _embed_in_ora, "": _embed_in_pngs}[suffix](temp, text)
        os.replace(temp, target)
    finally:
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
    return target


# -------------------------------------------------------------------------------------------------- thumbnails


def save_layer_thumbs(stack, size: int = THUMB_SIZE) -> list[dict]:
    """Small RGBA PNGs of each layer's box (the background: the whole canvas) in the temp folder, for the UI;
    see the module's `layer_thumbs` entries in /view terms (filename, subfolder, type "temp")."""
    folder, token = temp_dir(), secrets.token_hex(6)
    thumbs = []
    for index, layer in enumerate(stack.layers):
        x0, y0, x1, y1 = (0, 0, stack.width, stack.height) if index == 0 else layer.box
        crop = (max(0, int(x0)), max(0, int(y0)), min(stack.width, round(x1)), min(stack.height, round(y1)))
        if crop[2] <= crop[0] or crop[3] <= crop[1]:
            crop = (0, 0, stack.width, stack.height)
        image = layer.image.crop(crop)
        image.thumbnail((size, size))
        name = f"pixart_layer_{token}_{index:03d}.png"
        image.save(folder / name, format="PNG", compress_level=1)
        thumbs.append({"name": layer.name, "index": index, "box": [float(v) for v in layer.box],
                       "canvas": [stack.width, stack.height], "filename": name, "subfolder": "", "type": "temp"})
    return thumbs


# ---------------------------------------------------------------------------------------------------- the nodes


class AtelierSaveLayers:
    """Save a layer stack as a PSD, an OpenRaster file or a folder of PNGs in the output folder."""

    DESCRIPTION = ("Saves the layers as a file image editors open with every layer separate: psd (Photoshop, "
                   "Krita, GIMP, Affinity, Photopea), ora (OpenRaster: Krita, GIMP, MyPaint) or png folder (one "
                   "canvas-sized RGBA PNG per layer, composite.png and layout.json). Files go to ComfyUI's output "
                   "folder, named like Save Image (<prefix>_00001_.psd). Layer names, prompts and boxes are kept "
                   "for Load Layers and Regenerate Layer; the workflow is embedded (PSD: XMP metadata; ORA: "
                   "pixart-atelier/workflow.json; PNGs: text chunks, so composite.png dropped on ComfyUI restores "
                   "the workflow). Nothing is written when saving fails.")
    CATEGORY = f"{CATEGORY}/layers"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "stack": (PIXART_LAYERS, {"tooltip": "The layer stack from Generate Layers, Regenerate Layer or "
                                                     "Load Layers."}),
                "format": (list(FORMATS), {"default": "psd", "tooltip": "psd, ora (OpenRaster) or png folder."}),
                "filename_prefix": ("STRING", {"default": "PixArt-layers", "tooltip": "File name prefix; may hold "
                                    "a sub-folder and core's %date:yyyy-MM-dd% / %width% variables."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save(self, stack, format="psd", filename_prefix="PixArt-layers", prompt=None, extra_pnginfo=None):
        if format not in FORMATS:
            raise ValueError(f"format: {format!r} is not one of {', '.join(FORMATS)}")
        stack = check_stack(stack, "stack")
        target, subfolder = _target(filename_prefix, FORMATS[format], stack.width, stack.height)
        save_stack(stack, target, png_metadata(prompt, extra_pnginfo))
        log.info("PixArt Atelier: saved %d layers to %s", len(stack.layers), target)
        saved = {"filename": target.name, "subfolder": subfolder, "type": "output", "format": format}
        if format == "png folder":
            preview = {"filename": "composite.png", "subfolder": os.path.join(subfolder, target.name), "type": "output"}
        else:
            preview = _temp_preview(stack)
        return {"ui": {"images": [preview], "layer_files": [saved], "text": [os.path.join(subfolder, target.name)]}}


def _temp_preview(stack) -> dict:
    name = f"pixart_layers_{secrets.token_hex(6)}.png"
    stack.composite.save(temp_dir() / name, format="PNG", compress_level=1)
    return {"filename": name, "subfolder": "", "type": "temp"}


def layer_files() -> list[str]:
    """Layer files in the input folder and its sub-folders (one level): .psd and .ora files, and PNG folders
    holding layout.json."""
    root = input_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        relative = os.path.relpath(dirpath, root)
        depth = 0 if relative == "." else relative.count(os.sep) + 1
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < 1 else []
        if relative != "." and FOLDER_MANIFEST in filenames:
            found.append(relative.replace(os.sep, "/"))
            dirnames.clear()
            continue
        found += [os.path.normpath(os.path.join(relative, f)).replace(os.sep, "/") for f in filenames
                  if f.lower().endswith(LAYER_FILE_SUFFIXES) and not f.startswith(".")]
    return sorted(found)


def layer_file_path(name: str) -> Path:
    """The input-folder path of `name` (as `layer_files` lists it); ValueError naming input "file"."""
    root = input_dir()
    path = (root / os.path.normpath(name)).resolve()
    if not name or os.path.commonpath((root.resolve(), path)) != str(root.resolve()):
        raise ValueError(f"file: {name!r} must name a .psd, .ora or PNG folder inside the input folder {root}")
    if not path.exists():
        raise ValueError(f"file: {name!r} is not in the input folder {root}; upload it or refresh the list")
    return path


class AtelierLoadLayers:
    """Load a layered PSD, OpenRaster file or PNG folder from the input folder as a layer stack."""

    DESCRIPTION = ("Loads a layered file from ComfyUI's input folder (upload a .psd or .ora there, or copy a PNG "
                   "folder saved by Save Layers): every visible layer becomes a layer of the stack, bottom to top, "
                   "groups flattened. Names, prompts and boxes saved by Save Layers come back; for files made "
                   "elsewhere boxes come from each layer's opaque area and prompts are empty. Outputs the stack "
                   "(for Regenerate Layer, Layer Select, Save Layers), the composite, the layers and their masks.")
    CATEGORY = f"{CATEGORY}/layers"
    FUNCTION = "load"
    RETURN_TYPES = STACK_RETURN_TYPES
    RETURN_NAMES = STACK_RETURN_NAMES
    OUTPUT_TOOLTIPS = STACK_OUTPUT_TOOLTIPS

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "file": (layer_files(), {"tooltip": "A .psd or .ora file, or a PNG folder with layout.json, in "
                                                "ComfyUI's input folder."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        try:
            layer_file_path(file)
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def IS_CHANGED(cls, file):
        try:
            path = layer_file_path(file)
        except ValueError:
            return ""
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        digest = hashlib.sha256()
        for item in files:
            stat = item.stat()
            digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def load(self, file):
        from ..pixart_core.layers import LayerStack

        path = layer_file_path(file)
        try:
            stack = LayerStack.load(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"file: {file!r} could not be loaded ({err})") from None
        log.info("PixArt Atelier: loaded %s: %r", file, stack)
        return stack_outputs(stack)
