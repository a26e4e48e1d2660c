"""The PixArt sampler node: text-to-image or image-to-image, returning a core LATENT (unscaled latents)."""

from __future__ import annotations

import torch

from ..pixart_core.limits import MAX_SIDE, check_sampled_size
from ..pixart_core.memory import check_fits
from ..pixart_core.sampling import (DEFAULT_SAMPLER, DEFAULT_STEPS, MAX_STEPS, SAMPLERS, SamplingInterrupted,
                                    cfg_eps_fn, sample, sampler_spec)
from . import host
from .controlnet import controls_of, encode_hints, load_with_controlnets, scheduled_controls
from .types import CATEGORY, PIXART_CONDITIONING, PIXART_MODEL, check_latent

MAX_RESOLUTION = MAX_SIDE  # the longest side of a trained PixArt bin (pixart_core/limits.py)


def _noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Seeded standard normal noise drawn on the CPU (device independent, like ComfyUI's KSampler)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)  # [B, 4, h, w]


def run_sampler(model, positive, negative, seed, steps, cfg, sampler_name, width, height, batch_size,
                latent=None, denoise=1.0) -> dict:
    """Sample with PixArt; returns {"samples": unscaled latents [B, 4, H/8, W/8]}."""
    config = model.config
    scale = config.vae_scale_factor
    init_latent = None
    if latent is not None:
        samples = latent["samples"].float()  # [B, 4, h, w] unscaled
        check_latent(samples, "latent")
        batch_size, _, lat_h, lat_w = samples.shape
        init_latent = samples * scale
    else:
        if width % 16 or height % 16:
            raise ValueError(f"width and height must be multiples of 16 for PixArt, got {width}x{height}")
        lat_h, lat_w = height // 8, width // 8
    if lat_h % config.patch_size or lat_w % config.patch_size:
        raise ValueError(f"the latent is {lat_w}x{lat_h}; PixArt needs sizes that are multiples of 16 pixels")
    # sampled at the latent's own size: larger than any trained PixArt is refused before any model work
    check_sampled_size(lat_h * 8, lat_w * 8, "latent" if latent is not None else "width/height")
    device = getattr(model.handle, "load_device", None) or host.compute_device()
    check_fits(lat_h * 8, lat_w * 8, lat_h * 8, lat_w * 8, batch_size, device, budget=host.memory_budget(device),
               argument="width/height", hidden_size=config.hidden_size,
               dtype_bytes=next(model.handle.module.parameters()).dtype.itemsize,
               guidance=cfg > 1.0, decode=False)  # the latent is decoded by the VAE node
    noise = _noise(seed, (batch_size, config.in_channels, lat_h, lat_w))
    hints = controls_of(positive, negative)
    control_latents = encode_hints(hints, lat_w * 8, lat_h * 8, batch_size, scale)  # before the DiT takes the GPU

    module, control_modules = load_with_controlnets(model.handle, hints)
    controls = scheduled_controls(hints, control_latents, control_modules)
    param = next(module.parameters())
    device, dtype = param.device, param.dtype
    cond, cond_mask = positive.repeat_to(batch_size, "positive")  # [B, L, C], [B, L]
    neg, neg_mask = negative.repeat_to(batch_size, "negative")
    # micro-conditions (α-1024-MS): the model takes the latent's size and ratio, as the reference pipelines do
    # ControlNets: those the positive conditioning carries (see controls_of), one latent for the CFG batch
    eps_fn = cfg_eps_fn(module, cond.to(device, dtype), cond_mask.to(device), neg.to(device, dtype),
                        neg_mask.to(device), cfg, controls=controls)

    preview = host.preview_callback(model.latent_space)
    bars = []  # created at the first step: image-to-image runs fewer steps than asked

    def callback(step, total, x, denoised):
        if not bars:
            bars.append(host.progress(total))
        bars[0].update(step + 1, preview(step, total, x, denoised) if preview else None)

    with torch.inference_mode():
        try:
            out = sample(eps_fn, noise.to(device, dtype), sampler=sampler_name, steps=steps, denoise=denoise,
                         init_latent=None if init_latent is None else init_latent.to(device, dtype),
                         generator=torch.Generator("cpu").manual_seed((seed + 1) % 2**64), callback=callback,
                         should_stop=host.should_stop)
        except SamplingInterrupted:
            host.check_interrupted()
            raise
    return {"samples": (out.float() / scale).cpu()}


class AtelierSampler:
    """Sample a PixArt model with classifier-free guidance."""

    DESCRIPTION = ("Generates latents with a PixArt model: DPM-Solver++ 2M (20 steps, cfg 4.5) by default, "
                   "SA-Solver, Euler, Euler ancestral, DDIM, or LCM for PixArt-δ (4 steps, cfg 1). Connect a "
                   "latent and lower denoise for image-to-image. ControlNets attached by PixArt Apply ControlNet "
                   "are taken from the positive conditioning. The output decodes with core VAE Decode.")
    CATEGORY = f"{CATEGORY}/sampling"
    FUNCTION = "generate"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Unscaled latents for VAE Decode (SD-1.x VAE for PixArt-α, SDXL VAE for PixArt-Σ).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (PIXART_MODEL, {"tooltip": "The PixArt model."}),
                "positive": (PIXART_CONDITIONING, {"tooltip": "Positive prompt from PixArt T5 Text Encode."}),
                "negative": (PIXART_CONDITIONING, {"tooltip": "Negative prompt from PixArt T5 Text Encode."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Noise seed; the same seed gives the same image on any device."}),
                "steps": ("INT", {"default": DEFAULT_STEPS[DEFAULT_SAMPLER], "min": 1, "max": MAX_STEPS,
                                  "tooltip": "Sampling steps; usual: " + ", ".join(
                                      f"{name} {steps}" for name, steps in DEFAULT_STEPS.items()) + "."}),
                "cfg": ("FLOAT", {"default": 4.5, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Guidance scale; 1 or less turns CFG off (use that for LCM)."}),
                "sampler_name": (list(SAMPLERS), {"default": DEFAULT_SAMPLER, "tooltip": "The sampling algorithm."}),
                "width": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16,
                                  "tooltip": "Image width in pixels (ignored when a latent is connected)."}),
                "height": ("INT", {"default": 1024, "min": 16, "max": MAX_RESOLUTION, "step": 16,
                                   "tooltip": "Image height in pixels (ignored when a latent is connected)."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                       "tooltip": "Images per run (ignored when a latent is connected)."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "How much of a connected latent to replace; 1 = text-to-image."}),
            },
            "optional": {
                "latent": ("LATENT", {"tooltip": "Start from this latent (from VAE Encode) for image-to-image."}),
            },
        }

    def generate(self, model, positive, negative, seed, steps, cfg, sampler_name, width, height, batch_size,
                 denoise=1.0, latent=None):
        spec = sampler_spec(sampler_name, "sampler_name")
        steps = steps or spec.default_steps
        return (run_sampler(model, positive, negative, seed, steps, cfg, sampler_name, width, height, batch_size,
                            latent, denoise if latent is not None else 1.0),)
