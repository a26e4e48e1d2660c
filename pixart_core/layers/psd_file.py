"""Photoshop files (.psd) through psd-tools (`pip install psd-tools`, MIT; `api/psd_image.py`, `api/layers.py`).

Written: an 8-bit RGB document, one named pixel layer per stack layer (bottom to top), each cropped to its alpha
bounds and placed at its offset with its alpha as the layer transparency channel; the merged image, which
Photoshop shows when it does not composite (a blank canvas without it), is rendered by psd-tools on save; the
layer-stack manifest (prompts, boxes, layout) rides in the XMP metadata resource.

Read (files made anywhere): groups are flattened into their layers in z order; hidden layers (or layers in a
hidden group) are skipped; layer and group opacity and an enabled layer mask are multiplied into the alpha;
adjustment, fill and empty layers are skipped; blend modes other than normal, clipping and layer effects are
not applied (logged).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .atomic_io import write_file_atomic
from .manifest import manifest_from_xmp, manifest_json, read_manifest, xmp_packet
from .pixels import crop_to_alpha, place

logger = logging.getLogger(__name__)


def _psd_tools():
    try:
        from psd_tools import PSDImage
        from psd_tools.api.layers import PixelLayer
        from psd_tools.composite import composite  # noqa: F401  (save renders the merged image with it)
    except ImportError as err:
        raise ImportError(f"PSD files need psd-tools; install it with `pip install psd-tools` ({err})") from None
    return PSDImage, PixelLayer


def write_psd(stack, path: str | Path) -> Path:
    """Write `stack` to `path` (.psd) atomically; returns the path."""
    PSDImage, PixelLayer = _psd_tools()
    from psd_tools.constants import Resource
    from psd_tools.psd.image_resources import ImageResource

    psd = PSDImage.new("RGB", (stack.width, stack.height), color=255, depth=8)  # white backdrop, as the stack
    for layer in stack.layers:
        piece, left, top = crop_to_alpha(layer.image)
        PixelLayer.fromarray(np.asarray(piece), psd, name=layer.name, top=top, left=left)  # [h, w, 4] uint8
    psd.image_resources[Resource.XMP_METADATA] = ImageResource(
        key=Resource.XMP_METADATA, data=xmp_packet(manifest_json(stack)))
    return write_file_atomic(path, psd.save, "PSD file")


def _opacity(layer) -> float:
    """The layer's opacity times its groups' opacities (0..1)."""
    value = layer.opacity / 255.0
    parent = layer.parent
    while parent is not None and getattr(parent, "kind", None) == "group":
        value *= parent.opacity / 255.0
        parent = parent.parent
    return value


def _apply_mask(layer, image):
    """`image` (RGBA, layer-sized) with an enabled user mask multiplied into its alpha."""
    from PIL import Image

    mask = layer.mask if layer.has_mask() else None
    if mask is None or mask.disabled:
        return image
    mask_image = mask.topil(layer_sized=True)
    if mask_image is None:
        return image
    pixels = np.array(image)  # [h, w, 4] uint8
    weights = np.asarray(mask_image.convert("L"), dtype=np.float32) / 255.0  # [h, w]
    if weights.shape != pixels.shape[:2]:
        return image
    pixels[..., 3] = np.rint(pixels[..., 3] * weights).astype(np.uint8)
    return Image.fromarray(pixels, "RGBA")


def _leaves(group, source: str):
    """Visible non-group layers under `group`, bottom to top (psd-tools iterates children bottom first)."""
    for layer in group:
        if not layer.is_visible():
            logger.info("%s: hidden layer %r skipped", source, layer.name)
            continue
        if layer.is_group():
            yield from _leaves(layer, source)
            continue
        from psd_tools.api.layers import AdjustmentLayer, FillLayer

        if isinstance(layer, (AdjustmentLayer, FillLayer)):
            logger.info("%s: %s layer %r skipped (not pixels)", source, layer.kind, layer.name)
            continue
        yield layer


def read_psd(path: str | Path):
    """A LayerStack from a PSD file (ours or made elsewhere); ValueError naming the file if it is not one."""
    from .stack import assemble

    PSDImage, _ = _psd_tools()
    from psd_tools.constants import Resource

    path = Path(path)
    source = f"path {path}"
    try:
        psd = PSDImage.open(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        raise OSError(f"{source}: cannot read the PSD file ({err.strerror or err})") from None
    except Exception as err:  # psd-tools raises assorted errors (OSError among them) on a damaged file
        raise ValueError(f"{source}: not a readable PSD file ({type(err).__name__}: {err})") from None
    width, height = psd.width, psd.height
    named_images = []
    for layer in _leaves(psd, source):
        image = layer.topil()
        if image is None or layer.width <= 0 or layer.height <= 0:
            logger.info("%s: empty layer %r skipped", source, layer.name)
            continue
        if layer.blend_mode.name not in ("NORMAL", "PASS_THROUGH") or layer.clipping:
            logger.info("%s: layer %r blend mode %s / clipping not applied (loaded as normal)",
                        source, layer.name, layer.blend_mode.name)
        image = _apply_mask(layer, image.convert("RGBA"))
        name = layer.name.rstrip("\x00")  # Krita ends its Unicode layer names with a NUL
        named_images.append((name, place(image, layer.left, layer.top, width, height, _opacity(layer))))
    if not named_images:  # a flat PSD: the merged image is the only layer
        merged = psd.topil()
        if merged is None:
            raise ValueError(f"{source}: PSD has neither layers nor a merged image")
        named_images.append(("background", merged.convert("RGBA")))
    manifest = None
    try:
        packet = psd.image_resources.get_data(Resource.XMP_METADATA)
        text = manifest_from_xmp(packet) if isinstance(packet, bytes) else None
        manifest = read_manifest(text, source) if text else None
    except ValueError as err:
        logger.info("%s: manifest ignored (%s)", source, err)
    return assemble(named_images, width, height, manifest, source)
