"""Loader nodes: PixArt transformer, T5 encoder, VAE."""

from __future__ import annotations

import logging

import torch

from ..pixart_core.dtypes import DTYPES
from ..pixart_core.pixart.config import PRESETS
from ..pixart_core.pixart.load import load_transformer
from ..pixart_core.t5 import load_t5_encoder, load_t5_tokenizer
from . import host
from .core_vae import load_core_vae
from .types import CATEGORY, PIXART_MODEL, PIXART_T5, PixArtModel, PixArtT5

log = logging.getLogger(__name__)

_MODEL_FOLDERS = ("diffusion_models", "checkpoints")


def _model_names() -> list[str]:
    names: list[str] = []
    for kind in _MODEL_FOLDERS:
        names += [n for n in host.list_models(kind) if n not in names]
    return names


def _model_path(name: str):
    for kind in _MODEL_FOLDERS:
        if name in host.list_models(kind):
            return host.model_path(kind, name)
    raise FileNotFoundError(f"{name!r} is not in models/diffusion_models or models/checkpoints; "
                            f"put the PixArt file there and refresh the node list.")


class AtelierModelLoader:
    """Load a PixArt-α/Σ/δ transformer; the variant is detected from the weights."""

    DESCRIPTION = ("Loads a PixArt transformer (official .pth/.safetensors or diffusers weights) from "
                   "models/diffusion_models or models/checkpoints and reports the detected variant.")
    CATEGORY = f"{CATEGORY}/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (PIXART_MODEL, "STRING")
    RETURN_NAMES = ("model", "detected")
    OUTPUT_TOOLTIPS = ("The PixArt transformer, placed on the GPU by ComfyUI when sampling.",
                       "What was detected: variant, depth, tokens, PE interpolation, layout.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (_model_names(), {"tooltip": "PixArt weights in models/diffusion_models or models/checkpoints."}),
            "dtype": (["auto", *DTYPES], {"default": "auto",
                      "tooltip": "Weight dtype; auto = bf16 (fp16 on older GPUs) on a GPU; on the CPU bf16 when it "
                                 "has native bf16 (AVX512-BF16/AMX), else fp32."}),
            "variant": (["auto"] + sorted(PRESETS), {"default": "auto",
                        "tooltip": "Override detection only when a file is detected wrongly."}),
        }}

    def load(self, model_name, dtype="auto", variant="auto"):
        device = host.compute_device()
        torch_dtype = host.default_dtype(device) if dtype == "auto" else DTYPES[dtype]
        path = _model_path(model_name)
        module = load_transformer(path, dtype=torch_dtype, device="cpu", variant=None if variant == "auto" else variant)
        detection = getattr(module, "detection", None)
        summary = detection.summary() if detection is not None else module.config.variant
        log.info("PixArt Atelier: %s -> %s", model_name, summary)
        model = PixArtModel(host.managed(module, kind="diffusion"), module.config, summary)
        return {"ui": {"text": [summary]}, "result": (model, summary)}


class AtelierT5Loader:
    """Load a T5-v1.1-XXL encoder (Hugging Face folder or single file) with its tokenizer."""

    DESCRIPTION = ("Loads the T5 text encoder from models/text_encoders: a Hugging Face T5 folder or a single "
                   "t5xxl file (fp32/fp16/bf16/fp8). Choose the CPU to keep a small GPU for the transformer.")
    CATEGORY = f"{CATEGORY}/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (PIXART_T5,)
    RETURN_NAMES = ("t5",)
    OUTPUT_TOOLTIPS = ("The T5 encoder and tokenizer.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "t5_name": (host.list_models("text_encoders"), {"tooltip": "A t5xxl file or a T5 folder in models/text_encoders."}),
            "dtype": (["auto", *DTYPES, "fp8_e4m3fn"], {"default": "auto",
                      "tooltip": "Compute dtype; fp8_e4m3fn stores weights in 8 bits (half of fp16's memory) and "
                                 "computes in the auto dtype. auto = bf16 (fp16 on older GPUs) on a GPU; on the "
                                 "CPU bf16 when it has native bf16, else fp32."}),
            "device": (["auto", "cpu", "gpu"], {"default": "auto",
                       "tooltip": "Where T5 runs; cpu keeps it off the GPU entirely."}),
        }}

    def load(self, t5_name, dtype="auto", device="auto"):
        path = host.model_path("text_encoders", t5_name)
        target = torch.device("cpu") if device == "cpu" else host.text_encoder_device() if device == "auto" else host.compute_device()
        storage = torch.float8_e4m3fn if dtype == "fp8_e4m3fn" else None
        compute = DTYPES[dtype] if dtype in DTYPES else host.default_dtype(target)
        encoder = load_t5_encoder(path, dtype=compute, device="cpu", storage_dtype=storage)
        try:
            tokenizer = load_t5_tokenizer(path)
        except FileNotFoundError:
            bundled = host.comfy_tokenizer_dir()
            if bundled is None:
                raise
            tokenizer = load_t5_tokenizer(bundled)
        handle = host.managed(encoder, kind="text_encoder", device=target)
        return (PixArtT5(handle, tokenizer, t5_name),)


class AtelierVAELoader:
    """Load an SD-1.x or SDXL VAE as a core VAE, for users without a VAE loader of their own."""

    DESCRIPTION = ("Loads a VAE from models/vae (single file or diffusers folder). PixArt-α uses the SD-1.x VAE "
                   "(sd-vae-ft-ema), PixArt-Σ the SDXL VAE. The output works with core VAE Decode/Encode.")
    CATEGORY = f"{CATEGORY}/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("VAE",)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("A VAE usable by core and PixArt Atelier nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (host.list_models("vae"), {"tooltip": "A VAE file or diffusers VAE folder in models/vae."}),
        }}

    def load(self, vae_name):
        return (load_core_vae(host.model_path("vae", vae_name)),)
