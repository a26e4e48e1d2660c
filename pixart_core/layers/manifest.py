"""The stack manifest: layer names, prompts, boxes and the layout, stored beside the pixels in every file format.

Folder: `layout.json`. ORA: `pixart-atelier/layout.json` inside the zip (readers ignore files they do not know).
PSD: a JSON string inside the XMP metadata resource (ID 1060), which editors keep when they re-save.
On load the manifest is used only if its layer names match the file's layers in order; a file whose layers
were edited elsewhere falls back to names from the file, boxes from the alpha bounds and empty prompts.
"""

from __future__ import annotations

import json
import logging
from xml.sax.saxutils import escape

from .layout import parse_layout

logger = logging.getLogger(__name__)

FORMAT = "pixart-atelier.layer-stack"
VERSION = 1
XMP_NAMESPACE = "https://pixart-atelier.invalid/ns/layer-stack/1.0/"  # an XMP namespace is a name, not an address
_XMP_TAG = "layerStack"


def build_manifest(stack, files: list[str] | None = None, composite: str | None = None) -> dict:
    """A JSON-ready description of `stack` (bottom to top); `files` adds each layer's PNG name (folder form)."""
    layers = []
    for index, layer in enumerate(stack.layers):
        entry = {"name": layer.name, "prompt": layer.prompt, "box": list(layer.box)}
        if files is not None:
            entry["file"] = files[index]
        layers.append(entry)
    manifest = {"format": FORMAT, "version": VERSION, "width": stack.width, "height": stack.height,
                "layers": layers, "layout": stack.layout.to_dict() if stack.layout is not None else None}
    if composite is not None:
        manifest["composite"] = composite
    return manifest


def manifest_json(stack, **kwargs) -> str:
    return json.dumps(build_manifest(stack, **kwargs), indent=2, ensure_ascii=False)


def read_manifest(text: str | bytes, source: str) -> dict:
    """Parse and check a manifest; ValueError names `source` and the field."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{source}: invalid JSON in the layer-stack manifest ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{source}: not a layer-stack manifest (expected \"format\": \"{FORMAT}\")")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{source}: field 'layers' must be a non-empty list")
    for index, entry in enumerate(layers):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("prompt", ""), str):
            raise ValueError(f"{source}: layers[{index}] needs a text 'name' and 'prompt'")
        box = entry.get("box")
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise ValueError(f"{source}: layers[{index}].box must be 4 numbers, got {box!r}")
    for field in ("width", "height"):
        value = data.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{source}: field '{field}' must be a positive integer, got {value!r}")
    return data


def layout_from_manifest(data: dict, source: str):
    """The manifest's `Layout`, or None when it has none or it no longer validates (logged)."""
    if data.get("layout") is None:
        return None
    try:
        return parse_layout(data["layout"])
    except ValueError as err:
        logger.warning("%s: stored layout ignored (%s)", source, err)
        return None


def matches(data: dict | None, names: list[str]) -> bool:
    """Whether manifest `data` describes layers with exactly these names, bottom to top."""
    return data is not None and [entry["name"] for entry in data["layers"]] == names


def xmp_packet(manifest_text: str) -> bytes:
    """An XMP packet carrying the manifest JSON as one property in our namespace."""
    body = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/">'
            f'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:pa="{XMP_NAMESPACE}">'
            f'<pa:{_XMP_TAG}>{escape(manifest_text)}</pa:{_XMP_TAG}>'
            f'</rdf:Description></rdf:RDF></x:xmpmeta>')
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>' + body
            + '<?xpacket end="w"?>').encode("utf-8")


def manifest_from_xmp(packet: bytes) -> str | None:
    """The manifest JSON from an XMP packet, or None when the packet has none (or does not parse)."""
    import xml.etree.ElementTree as ElementTree  # expat: no external entities are fetched

    try:
        root = ElementTree.fromstring(packet)
    except ElementTree.ParseError:
        return None
    node = root.find(f".//{{{XMP_NAMESPACE}}}{_XMP_TAG}")
    return node.text if node is not None and node.text else None
