"""PixArt-δ ControlNet nodes: load a ControlNet, apply it (with a control image) to a pair of conditionings.

The sampler turns what a conditioning carries into `pixart_core` controls with `scheduled_controls`: each control
image is brought to the generation size and encoded with the connected VAE (its posterior mean) when sampling,
as `PixArtPipeline` does (`pixart_core/controlnet/condition.py`).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..pixart_core.bins import resize_and_crop
from ..pixart_core.controlnet import load_controlnet
from ..pixart_core.controlnet.condition import control_image_tensor
from ..pixart_core.dtypes import DTYPES
from ..pixart_core.sampling.guidance import ScheduledControl
from . import host
from .types import (CATEGORY, PIXART_CONDITIONING, PIXART_CONTROLNET, ControlHint, PixArtConditioning,
                    PixArtControlNet)

log = logging.getLogger(__name__)


class AtelierControlNetLoader:
    """Load a PixArt-δ ControlNet (official combined or controlnet-only file, diffusers layout)."""

    DESCRIPTION = ("Loads a PixArt ControlNet from models/controlnet: the released PixArt-δ HED ControlNet "
                   "(PixArt-XL-2-1024-ControlNet.pth / -512-, the file that also holds a base model: only the "
                   "ControlNet part is used), controlnet-only .pth/.safetensors files or diffusers-layout weights.")
    CATEGORY = f"{CATEGORY}/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (PIXART_CONTROLNET,)
    RETURN_NAMES = ("controlnet",)
    OUTPUT_TOOLTIPS = ("The ControlNet, for PixArt Apply ControlNet.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "controlnet_name": (host.list_models("controlnet"), {"tooltip": "PixArt ControlNet weights in "
                                "models/controlnet, e.g. PixArt-XL-2-1024-ControlNet.pth."}),
            "dtype": (["auto", *DTYPES], {"default": "auto",
                      "tooltip": "Weight dtype; keep it as the PixArt model's. auto = bf16 (fp16 on older GPUs) on "
                                 "a GPU; on the CPU bf16 when it has native bf16, else fp32."}),
        }}

    def load(self, controlnet_name, dtype="auto"):
        torch_dtype = host.default_dtype(host.compute_device()) if dtype == "auto" else DTYPES[dtype]
        module = load_controlnet(host.model_path("controlnet", controlnet_name), dtype=torch_dtype, device="cpu")
        log.info("PixArt Atelier: %s -> %s", controlnet_name, module.summary)
        return (PixArtControlNet(host.managed(module, kind="diffusion"), module.summary),)


class AtelierApplyControlNet:
    """Attach a ControlNet and its control image to a positive and a negative conditioning."""

    DESCRIPTION = ("Applies a PixArt ControlNet: the PixArt sampler follows the control image (an edge map, e.g. "
                   "from PixArt HED Preprocessor, the map PixArt-δ was trained on) between start and end percent "
                   "of the steps. Chain several to combine ControlNets. Made for PixArt-α 1024/512 bases; on "
                   "PixArt-Σ bases it is experimental (no Σ ControlNet has been released).")
    CATEGORY = f"{CATEGORY}/conditioning"
    FUNCTION = "apply"
    RETURN_TYPES = (PIXART_CONDITIONING, PIXART_CONDITIONING)
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("The positive conditioning with the ControlNet attached.",
                       "The negative conditioning with the same ControlNet attached.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": (PIXART_CONDITIONING, {"tooltip": "Positive prompt from PixArt T5 Text Encode."}),
            "negative": (PIXART_CONDITIONING, {"tooltip": "Negative prompt from PixArt T5 Text Encode."}),
            "controlnet": (PIXART_CONTROLNET, {"tooltip": "From PixArt ControlNet Loader. Released for PixArt-α "
                           "(1024/512); on PixArt-Σ bases experimental: no Σ ControlNet has been released."}),
            "image": ("IMAGE", {"tooltip": "The control image (edge map), resized and centre-cropped to the "
                      "generation size when sampling; 1 image or one per batch image."}),
            "vae": ("VAE", {"tooltip": "The VAE of the model's latent space (SD-1.x VAE for PixArt-α); it encodes "
                    "the control image."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "How strongly the image steers; 0 turns the ControlNet off."}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                        "tooltip": "Fraction of the steps after which control starts (0 = first)."}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                      "tooltip": "Fraction of the steps after which control stops (1 = last)."}),
        }}

    def apply(self, positive, negative, controlnet, image, vae, strength, start_percent=0.0, end_percent=1.0):
        if start_percent > end_percent:
            raise ValueError(f"start_percent {start_percent} is after end_percent {end_percent}; "
                             "choose start_percent <= end_percent")
        if strength == 0:
            return (positive, negative)
        hint = ControlHint(controlnet, image.detach().cpu(), vae, float(strength), float(start_percent),
                           float(end_percent))
        return tuple(dataclasses.replace(cond, controls=(*cond.controls, hint)) for cond in (positive, negative))


def controls_of(positive: PixArtConditioning, negative: PixArtConditioning) -> tuple[ControlHint, ...]:
    """The controls the sampler applies: the positive's (the model sees one set for the whole CFG batch, as
    core's sampler takes one per conditioning); a negative that carries others is logged and not used."""
    if tuple(map(id, negative.controls)) != tuple(map(id, positive.controls)):
        log.warning("PixArt Atelier: the negative conditioning carries other ControlNets than the positive; the "
                    "positive's are used for both (connect both through the same PixArt Apply ControlNet)")
    return positive.controls


@torch.no_grad()
def encode_hints(hints, width: int, height: int, batch: int, scale_factor: float) -> list[torch.Tensor]:
    """Each hint's control latent [1 or B, 4, height/8, width/8] (scaled, float32, CPU): its image covered and
    centre-cropped to the generation size, then encoded by its VAE (unscaled posterior mean) times the scale."""
    latents = []
    for hint in hints:
        if hint.image.shape[0] not in (1, batch):
            raise ValueError(f"the ControlNet image batch has {hint.image.shape[0]} images for {batch} latents; "
                             f"give 1 or {batch}")
        rgb = control_image_tensor(hint.image[..., :3].movedim(-1, 1))  # [n, 3, H, W] in 0..1 (grey -> RGB)
        pixels = resize_and_crop(rgb, width, height).movedim(1, -1)  # [n, height, width, 3]
        latents.append(hint.vae.encode(pixels).float().cpu() * scale_factor)  # [n, 4, h, w]
    return latents


def load_with_controlnets(model_handle, hints) -> tuple[torch.nn.Module, dict]:
    """Load the DiT and the hints' ControlNets on the device in one call; (DiT, {id(handle): ControlNet})."""
    handles = list({id(hint.controlnet.handle): hint.controlnet.handle for hint in hints}.values())
    loaded = host.load_on_device(model_handle, *handles)
    modules = loaded if handles else (loaded,)
    return modules[0], {id(handle): module for handle, module in zip(handles, modules[1:])}


def scheduled_controls(hints, latents, modules: dict) -> list[ScheduledControl]:
    """pixart_core controls from hints, their latents and {id(handle): module on the device}."""
    return [ScheduledControl(modules[id(hint.controlnet.handle)], latent, hint.strength, hint.start_percent,
                             hint.end_percent) for hint, latent in zip(hints, latents)]
