"""ComfyUI node classes (V1 API). Imported as `<pack>.nodes`, never as a top-level `nodes` module."""

from .loaders import AtelierModelLoader, AtelierT5Loader, AtelierVAELoader
from .resolution import AtelierResolutionSelect
from .sampler import AtelierSampler
from .text import AtelierT5TextEncode
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
}
