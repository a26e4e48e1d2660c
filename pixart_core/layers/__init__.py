"""Layered pictures: region layouts, layer stacks with an exact composite, and PSD / ORA / folder files."""

from .layout import BACKGROUND_NAME, MAX_LAYERS, LayerSpec, Layout, parse_layout
from .stack import Layer, LayerStack

__all__ = ["BACKGROUND_NAME", "MAX_LAYERS", "Layer", "LayerSpec", "LayerStack", "Layout", "parse_layout"]
