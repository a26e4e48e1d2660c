"""OpenRaster files (.ora), per the baseline spec (https://www.openraster.org/baseline/file-layout-spec.html and
layer-stack-spec.html): a zip whose first entry is `mimetype`, stored uncompressed, holding exactly
"image/openraster"; then `stack.xml` (children listed top-most first), `data/*.png` layers (cropped, placed by
x/y), `mergedimage.png` (full-size composite) and `Thumbnails/thumbnail.png` (at most 256x256). We add
`pixart-atelier/layout.json` (the layer-stack manifest); readers ignore files they do not know.

Read (files made anywhere): nested stacks (groups) are flattened in z order; hidden layers and hidden stacks
are skipped; layer and stack opacity are multiplied into the alpha; composite-ops other than svg:src-over are
loaded as src-over (logged).
"""

from __future__ import annotations

import io
import logging
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path

from PIL import Image

from .atomic_io import write_file_atomic
from .manifest import manifest_json, read_manifest
from .pixels import crop_to_alpha, place

logger = logging.getLogger(__name__)

MIMETYPE = b"image/openraster"
MANIFEST_NAME = "pixart-atelier/layout.json"
THUMBNAIL_MAX = 256
_MAX_XML_BYTES = 16 * 1024 * 1024  # a stack.xml larger than this is not a layer stack we can use
_MAX_PNG_BYTES = 1024 * 1024 * 1024  # refuse a zip member that would inflate past 1 GiB (a zip bomb)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=4)  # 8 bits per channel, not interlaced
    return buffer.getvalue()


def _stack_xml(stack, sources: list[str], offsets: list[tuple[int, int]]) -> bytes:
    image = ElementTree.Element("image", {"version": "0.0.6", "w": str(stack.width), "h": str(stack.height),
                                          "xres": "72", "yres": "72"})
    root_stack = ElementTree.SubElement(image, "stack")
    for index in reversed(range(len(stack.layers))):  # stack.xml lists the top-most layer first
        left, top = offsets[index]
        ElementTree.SubElement(root_stack, "layer", {
            "name": stack.layers[index].name, "src": sources[index], "x": str(left), "y": str(top),
            "opacity": "1.0", "visibility": "visible", "composite-op": "svg:src-over"})
    return ElementTree.tostring(image, encoding="utf-8", xml_declaration=True)


def write_ora(stack, path: str | Path) -> Path:
    """Write `stack` to `path` (.ora) atomically; returns the path."""
    sources, offsets, pieces = [], [], []
    for index, layer in enumerate(stack.layers):
        piece, left, top = crop_to_alpha(layer.image)
        sources.append(f"data/layer{index:03d}.png")
        offsets.append((left, top))
        pieces.append(piece)
    composite = stack.composite
    thumbnail = composite.copy()
    thumbnail.thumbnail((THUMBNAIL_MAX, THUMBNAIL_MAX))

    def write(handle):
        with zipfile.ZipFile(handle, "w") as archive:
            archive.writestr(zipfile.ZipInfo("mimetype"), MIMETYPE, compress_type=zipfile.ZIP_STORED)
            archive.writestr("stack.xml", _stack_xml(stack, sources, offsets), compress_type=zipfile.ZIP_DEFLATED)
            for source, piece in zip(sources, pieces):
                archive.writestr(source, _png_bytes(piece), compress_type=zipfile.ZIP_STORED)
            archive.writestr("mergedimage.png", _png_bytes(composite), compress_type=zipfile.ZIP_STORED)
            archive.writestr("Thumbnails/thumbnail.png", _png_bytes(thumbnail), compress_type=zipfile.ZIP_STORED)
            archive.writestr(MANIFEST_NAME, manifest_json(stack).encode("utf-8"), compress_type=zipfile.ZIP_DEFLATED)

    return write_file_atomic(path, write, "OpenRaster file")


def _number(element, attribute: str, default: float, source: str) -> float:
    text = element.get(attribute)
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{source}: stack.xml attribute {attribute}={text!r} is not a number") from None


def _walk(stack_element, opacity: float, x: int, y: int, source: str):
    """(layer element, opacity, x, y) for the visible layers under a <stack>, top-most first."""
    for child in stack_element:
        if child.get("visibility", "visible") == "hidden":
            logger.info("%s: hidden %s %r skipped", source, child.tag, child.get("name", ""))
            continue
        child_opacity = opacity * min(1.0, max(0.0, _number(child, "opacity", 1.0, source)))
        child_x = x + int(_number(child, "x", 0, source))
        child_y = y + int(_number(child, "y", 0, source))
        if child.tag == "stack":
            yield from _walk(child, child_opacity, child_x, child_y, source)
        elif child.tag == "layer":
            yield child, child_opacity, child_x, child_y


def _read_png(archive: zipfile.ZipFile, name: str, source: str) -> Image.Image:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ValueError(f"{source}: layer image {name!r} named in stack.xml is missing from the file") from None
    if info.file_size > _MAX_PNG_BYTES:
        raise ValueError(f"{source}: layer image {name!r} inflates to {info.file_size} bytes; refused")
    data = archive.read(info)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{source}: layer image {name!r} is not a readable PNG ({err})") from None
    return image.convert("RGBA")


def read_ora(path: str | Path):
    """A LayerStack from an OpenRaster file; ValueError naming the file if it is not one."""
    from .stack import assemble

    path = Path(path)
    source = f"path {path}"
    try:
        archive = zipfile.ZipFile(path)
    except OSError as err:
        raise OSError(f"{source}: cannot read the OpenRaster file ({err.strerror or err})") from None
    except zipfile.BadZipFile:
        raise ValueError(f"{source}: not an OpenRaster file (not a valid zip)") from None
    with archive:
        names = set(archive.namelist())
        if "mimetype" not in names or archive.read("mimetype").strip() != MIMETYPE:
            raise ValueError(f"{source}: not an OpenRaster file (no 'mimetype' entry saying image/openraster)")
        if "stack.xml" not in names or archive.getinfo("stack.xml").file_size > _MAX_XML_BYTES:
            raise ValueError(f"{source}: OpenRaster file has no usable stack.xml")
        try:
            root = ElementTree.fromstring(archive.read("stack.xml"))  # expat fetches no external entities
        except ElementTree.ParseError as err:
            raise ValueError(f"{source}: stack.xml is not valid XML ({err})") from None
        width, height = int(_number(root, "w", 0, source)), int(_number(root, "h", 0, source))
        top_stack = root.find("stack")
        if root.tag != "image" or width <= 0 or height <= 0 or top_stack is None:
            raise ValueError(f"{source}: stack.xml needs <image w=.. h=..> with a <stack>")
        named_images = []
        for element, opacity, x, y in _walk(top_stack, 1.0, 0, 0, source):
            op = element.get("composite-op", "svg:src-over")
            if op != "svg:src-over":
                logger.info("%s: layer %r composite-op %s loaded as svg:src-over", source, element.get("name"), op)
            piece = _read_png(archive, element.get("src", ""), source)
            name = element.get("name") or f"layer {len(named_images)}"
            named_images.append((name, place(piece, x, y, width, height, opacity)))
        named_images.reverse()  # stack.xml is top-most first; a LayerStack is bottom to top
        if not named_images and "mergedimage.png" in names:
            named_images.append(("background", _read_png(archive, "mergedimage.png", source)))
        manifest = None
        if MANIFEST_NAME in names:
            try:
                manifest = read_manifest(archive.read(MANIFEST_NAME), source)
            except ValueError as err:
                logger.info("%s: manifest ignored (%s)", source, err)
    return assemble(named_images, width, height, manifest, source)
