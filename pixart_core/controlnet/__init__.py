"""PixArt-δ ControlNet support: the ControlNet-Transformer branch and its loader, edge-map preprocessors (HED, Canny).

Names are imported lazily (as in `pixart_core/__init__.py`), so that OpenCV loads only when Canny is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PixArtControlNet": ".model",
    "load_controlnet": ".load",
    "HEDNetwork": ".hed",
    "hed_edges": ".hed",
    "load_hed": ".hed",
    "canny_edges": ".canny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
