"""A test-only ComfyUI custom node for tests/test_canvas_layers.py: shows the PIXART_LAYOUT it received.

tests/test_canvas_layers.py links this file into the temporary `custom_nodes/` next to the pack; it is never
shipped. Its UI output (and so /history) holds the Layout exactly as the server built it from the queued prompt.
"""

from __future__ import annotations


class AtelierLayoutProbe:
    """Output node: returns the received layout as JSON text in its UI message."""

    CATEGORY = "testing"
    FUNCTION = "probe"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"layout": ("PIXART_LAYOUT", {"tooltip": "The layout to report."})}}

    def probe(self, layout):
        return {"ui": {"layout_json": [layout.to_json(indent=None)]}}


NODE_CLASS_MAPPINGS = {"AtelierLayoutProbe": AtelierLayoutProbe}
