"""Resolution select: the model's aspect-ratio bins (the sizes PixArt was trained at)."""

from __future__ import annotations

from ..pixart_core.bins import bins_for
from .types import CATEGORY, PIXART_MODEL

# Every PixArt bin table has the same ratio keys (h/w); the sizes depend on the model's resolution.
RATIOS = sorted(bins_for(128), key=float)


class AtelierResolutionSelect:
    """Width and height of the model's bin for an aspect ratio."""

    DESCRIPTION = ("Gives the width and height PixArt was trained at for an aspect ratio (height / width), "
                   "from the model's bin table (256, 512, 1024 or 2048).")
    CATEGORY = f"{CATEGORY}/latent"
    FUNCTION = "select"
    RETURN_TYPES = ("INT", "INT")
    RETURN_NAMES = ("width", "height")
    OUTPUT_TOOLTIPS = ("Image width in pixels.", "Image height in pixels.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (PIXART_MODEL, {"tooltip": "The PixArt model whose training bins to use."}),
            "ratio": (RATIOS, {"default": "1.0", "tooltip": "Aspect ratio as height / width (0.25 = wide, 4.0 = tall)."}),
        }}

    def select(self, model, ratio):
        table = bins_for(model.config.sample_size)
        if ratio not in table:
            raise ValueError(f"ratio {ratio!r} is not a bin of this model; choose one of {', '.join(sorted(table, key=float))}")
        height, width = table[ratio]
        return (int(width), int(height))
