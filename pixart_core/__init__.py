"""PixArt Atelier core: PixArt-α/Σ/δ in pure PyTorch (no ComfyUI imports).

Public entry points (imported lazily so that `import pixart_core` stays cheap):
    load_transformer, load_controlnet, load_t5_encoder, load_t5_tokenizer, load_vae, PixArtPipeline, PixArtConfig
    RGBA: load_transparent_decoder, load_transparent_encoder, pad_rgb, matte (attention capture is
    `PixArtTransformer.capture_attention`)
    layers: Layout, parse_layout, Layer, LayerStack (PSD / ORA / PNG-folder files)
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "load_transformer": ".pixart.load",
    "PixArtTransformer": ".pixart.model",
    "PixArtConfig": ".pixart.config",
    "load_controlnet": ".controlnet.load",
    "load_t5_encoder": ".t5",
    "load_t5_tokenizer": ".t5",
    "load_vae": ".vae",
    "PixArtPipeline": ".pipeline",
    "CheckpointError": ".errors",
    "TokenizerNotFoundError": ".errors",
    "load_transparent_decoder": ".rgba.transparent_load",
    "load_transparent_encoder": ".rgba.transparent_load",
    "TransparentDecoder": ".rgba.transparent_decoder",
    "TransparentEncoder": ".rgba.transparent_encoder",
    "pad_rgb": ".rgba.transparent_encoder",
    "matte": ".rgba.matte",
    "Layer": ".layers",
    "LayerStack": ".layers",
    "Layout": ".layers",
    "parse_layout": ".layers",
    "LayerBackend": ".layers",
    "generate_layers": ".layers",
    "regenerate_layer": ".layers",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
