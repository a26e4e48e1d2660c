"""PixArt Atelier: ComfyUI entry point (node mappings and the web extension folder).

Importable without ComfyUI: the node layer reaches ComfyUI only through `nodes/host.py`, which falls back
to plain behaviour outside the host.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
