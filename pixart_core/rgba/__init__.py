"""RGBA output: LayerDiffuse's transparent decoder and offset encoder (arXiv 2402.17113) in plain PyTorch, and a
matte (trimap from a subject hint, closed-form matting) for frozen PixArt."""

from .transparent_decoder import TransparentDecoder
from .transparent_encoder import LatentTransparencyOffsetEncoder, TransparentEncoder, grey_composite, pad_rgb
from .transparent_load import (FAMILIES, RELEASED_FILES, LayerDiffuseFamily, family_from_name,
                               load_transparent_decoder, load_transparent_encoder)
from .transparent_unet import TransparentUNet, TransparentUNetConfig
from .matte import matte

__all__ = [
    "FAMILIES", "RELEASED_FILES", "LatentTransparencyOffsetEncoder", "LayerDiffuseFamily", "TransparentDecoder",
    "TransparentEncoder", "TransparentUNet", "TransparentUNetConfig", "family_from_name", "grey_composite",
    "load_transparent_decoder", "load_transparent_encoder", "matte", "pad_rgb",
]
