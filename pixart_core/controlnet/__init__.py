"""PixArt-δ ControlNet support: the ControlNet-Transformer branch and its loader, edge-map preprocessors (HED, Canny).

Names are imported lazily (as in `pixart_core/__init__.py`), so that OpenCV loads only when Canny is used.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "PixArtControlNet": ".model",
    "load_controlnet": ".load",
    "HEDNetwork": ".hed",
    "hed_edges": ".hed",
    "load_hed": ".hed",
    "canny_edges": ".canny",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
