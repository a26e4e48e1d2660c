"""RGBA output: LayerDiffuse's transparent decoder and offset encoder (arXiv 2402.17113) in plain PyTorch."""

from .transparent_decoder import TransparentDecoder
from .transparent_encoder import LatentTransparencyOffsetEncoder, TransparentEncoder, grey_composite, pad_rgb
from .transparent_load import (FAMILIES, RELEASED_FILES, LayerDiffuseFamily, family_from_name,
                               load_transparent_decoder, load_transparent_encoder)
from .transparent_unet import TransparentUNet, TransparentUNetConfig

__all__ = [
    "FAMILIES", "RELEASED_FILES", "LatentTransparencyOffsetEncoder", "LayerDiffuseFamily", "TransparentDecoder",
    "TransparentEncoder", "TransparentUNet", "TransparentUNetConfig", "family_from_name", "grey_composite",
    "load_transparent_decoder", "load_transparent_encoder", "pad_rgb",
]
