"""The control input of a PixArt-δ ControlNet: an edge map (or any image) -> the scaled VAE latent at the
generation size.

As the official app (PixArt-alpha `app/app_controlnet.py`): the image is brought to the generation's bin, mapped
from 0..1 to -1..1, a 1-channel map is repeated to 3 channels, VAE-encoded and multiplied by the VAE scale factor.
Two deliberate differences: the image is scaled to COVER the bin and centre-cropped (`bins.resize_and_crop`,
diffusers' `resize_and_crop_tensor`) where the app resizes the short side to the bin's short side and pads
when the ratios differ (torchvision `CenterCrop`); and the latent is the posterior MEAN, deterministic, where the
app samples the posterior (`latent_dist.sample()`), so that a seed alone fixes the result.
"""

from __future__ import annotations

import torch

from ..bins import resize_and_crop
from ..image_io import pil_to_rgb_array


def control_image_tensor(image) -> torch.Tensor:
    """A PIL image, a list of them, or a tensor [C, H, W] / [B, C, H, W] (C = 1 or 3, 0..1) -> float32
    [B, 3, H, W] in 0..1 (1-channel maps repeated to RGB)."""
    if not isinstance(image, torch.Tensor):
        import numpy as np

        images = image if isinstance(image, (list, tuple)) else [image]
        if not images or not all(hasattr(im, "convert") for im in images):
            raise ValueError("control_image: expected a PIL image, a list of them or a tensor [B, C, H, W] in 0..1")
        arrays = [pil_to_rgb_array(im) for im in images]  # [H, W, 3] each in 0..1, 16-bit/float tones kept
        if len({a.shape for a in arrays}) > 1:
            raise ValueError("control_image: the PIL images of a batch must all have the same size")
        image = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # [B, 3, H, W]
    if image.ndim == 3:
        image = image[None]  # [1, C, H, W]
    if image.ndim != 4 or image.shape[1] not in (1, 3) or not image.is_floating_point():
        raise ValueError(f"control_image: expected a float tensor [B, 1 or 3, H, W] in 0..1, got "
                         f"{tuple(image.shape)} {image.dtype}")
    image = image.float().expand(-1, 3, -1, -1)  # [B, 3, H, W]
    return image.contiguous()  # one memory layout: PIL and tensor inputs give bit-identical latents


def control_pixels(image, width: int, height: int) -> torch.Tensor:
    """The control image at exactly `height` x `width`: covered and centre-cropped, in -1..1 [B, 3, height, width]."""
    rgb = control_image_tensor(image)  # [B, 3, H, W] in 0..1
    return resize_and_crop(rgb, width, height) * 2.0 - 1.0  # [B, 3, height, width] in -1..1


@torch.inference_mode()
def encode_control_image(vae, image, width: int, height: int, scale_factor: float) -> torch.Tensor:
    """Control latent [B, 4, height/8, width/8] (float32, on the VAE's device) for pixart_core's `AutoencoderKL`:
    the posterior mean of the prepared image times `scale_factor` (the same scaled space the DiT samples in)."""
    pixels = control_pixels(image, width, height)  # [B, 3, height, width]
    param = next(vae.parameters())
    mean = vae.encode(pixels.to(param.device, param.dtype))  # [B, 4, h, w] posterior mean (sample=False)
    return mean.float() * scale_factor  # [B, 4, h, w]


def _per_control(value, count: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} ControlNets; give one value or one per ControlNet")
    return values


def prepare_controls(vae, controlnet, control_image, strength, start, end, width: int, height: int,
                     scale_factor: float, batch: int, images_per_prompt: int = 1, device=None) -> list:
    """`ScheduledControl`s for one ControlNet or a list of them (diffusers' multi-ControlNet convention: images,
    strengths and windows then come one per ControlNet, or one value for all).

    Each control image has 1, `batch / images_per_prompt` (one per prompt) or `batch` images."""
    from ..sampling.guidance import ScheduledControl

    many = isinstance(controlnet, (list, tuple))
    nets = list(controlnet) if many else [controlnet]
    images = _per_control(control_image, len(nets), "control_image") if many else [control_image]
    strengths = _per_control(strength, len(nets), "controlnet_conditioning_scale")
    starts = _per_control(start, len(nets), "control_guidance_start")
    ends = _per_control(end, len(nets), "control_guidance_end")
    controls = []
    for net, image, scale, first, last in zip(nets, images, strengths, starts, ends):
        latent = encode_control_image(vae, image, width, height, scale_factor)  # [n, 4, h, w]
        if latent.shape[0] not in (1, batch) and latent.shape[0] * images_per_prompt == batch:
            latent = latent.repeat_interleave(images_per_prompt, 0)  # [B, 4, h, w]: one map per prompt
        if latent.shape[0] not in (1, batch):
            raise ValueError(f"control_image has {latent.shape[0]} images for a batch of {batch}; give 1, one per "
                             f"prompt or {batch}")
        latent = latent if device is None else latent.to(device)  # [1 or B, 4, h, w]
        controls.append(ScheduledControl(net, latent, float(scale), float(first), float(last)))
    return controls
