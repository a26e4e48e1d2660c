"""ComfyUI node classes (V1 API). Imported as `<pack>.nodes`, never as a top-level `nodes` module."""

from .controlnet import AtelierApplyControlNet, AtelierControlNetLoader
from .layer_files import AtelierLoadLayers, AtelierSaveLayers
from .layer_nodes import AtelierGenerateLayers, AtelierLayerSelect, AtelierRegenerateLayer
from .layout_node import AtelierLayout
from .loaders import AtelierModelLoader, AtelierT5Loader, AtelierVAELoader
from .preprocessors import AtelierCannyPreprocessor, AtelierHEDPreprocessor
from .resolution import AtelierResolutionSelect
from .rgba_save import AtelierSaveRGBA
from .sampler import AtelierSampler
from .text import AtelierT5TextEncode
from .transparency import AtelierTransparentDecode, AtelierTransparentEncode, AtelierTransparentSampler
from .vae import AtelierVAEDecode, AtelierVAEEncode

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "AtelierModelLoader": AtelierModelLoader,
    "AtelierT5Loader": AtelierT5Loader,
    "AtelierVAELoader": AtelierVAELoader,
    "AtelierT5TextEncode": AtelierT5TextEncode,
    "AtelierResolutionSelect": AtelierResolutionSelect,
    "AtelierSampler": AtelierSampler,
    "AtelierVAEDecode": AtelierVAEDecode,
    "AtelierVAEEncode": AtelierVAEEncode,
    "AtelierControlNetLoader": AtelierControlNetLoader,
    "AtelierApplyControlNet": AtelierApplyControlNet,
    "AtelierHEDPreprocessor": AtelierHEDPreprocessor,
    "AtelierCannyPreprocessor": AtelierCannyPreprocessor,
    "AtelierTransparentSampler": AtelierTransparentSampler,
    "AtelierTransparentDecode": AtelierTransparentDecode,
    "AtelierTransparentEncode": AtelierTransparentEncode,
    "AtelierSaveRGBA": AtelierSaveRGBA,
    "AtelierLayout": AtelierLayout,
    "AtelierGenerateLayers": AtelierGenerateLayers,
    "AtelierRegenerateLayer": AtelierRegenerateLayer,
    "AtelierLayerSelect": AtelierLayerSelect,
    "AtelierSaveLayers": AtelierSaveLayers,
    "AtelierLoadLayers": AtelierLoadLayers,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "AtelierModelLoader": "PixArt Model Loader",
    "AtelierT5Loader": "PixArt T5 Loader",
    "AtelierVAELoader": "PixArt VAE Loader",
    "AtelierT5TextEncode": "PixArt T5 Text Encode",
    "AtelierResolutionSelect": "PixArt Resolution Select",
    "AtelierSampler": "PixArt Sampler",
    "AtelierVAEDecode": "PixArt VAE Decode",
    "AtelierVAEEncode": "PixArt VAE Encode",
    "AtelierControlNetLoader": "PixArt ControlNet Loader",
    "AtelierApplyControlNet": "PixArt Apply ControlNet",
    "AtelierHEDPreprocessor": "PixArt HED Preprocessor",
    "AtelierCannyPreprocessor": "PixArt Canny Preprocessor",
    "AtelierTransparentSampler": "PixArt Transparent Sampler",
    "AtelierTransparentDecode": "PixArt Transparent Decode",
    "AtelierTransparentEncode": "PixArt Transparent Encode",
    "AtelierSaveRGBA": "PixArt Save RGBA",
    "AtelierLayout": "PixArt Layout",
    "AtelierGenerateLayers": "PixArt Generate Layers",
    "AtelierRegenerateLayer": "PixArt Regenerate Layer",
    "AtelierLayerSelect": "PixArt Layer Select",
    "AtelierSaveLayers": "PixArt Save Layers",
    "AtelierLoadLayers": "PixArt Load Layers",
}
