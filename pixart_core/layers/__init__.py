"""Layered pictures: region layouts, layer stacks with an exact composite, and PSD / ORA / folder files; the
engine (`generate_layers`, `regenerate_layer`, `LayerBackend`) is imported on first use."""

from ..lazy import lazy_exports
from .layout import BACKGROUND_NAME, MAX_LAYERS, LayerSpec, Layout, parse_layout
from .stack import Layer, LayerStack

_ENGINE_EXPORTS = {"LayerBackend": ".backend", "generate_layers": ".engine", "regenerate_layer": ".engine"}

__all__ = ["BACKGROUND_NAME", "MAX_LAYERS", "Layer", "LayerBackend", "LayerSpec", "LayerStack", "Layout",
           "generate_layers", "parse_layout", "regenerate_layer"]

__getattr__, __dir__ = lazy_exports(__name__, _ENGINE_EXPORTS)
