"""pixart_core's VAE as a core ComfyUI `VAE`: a real `comfy.sd.VAE` inside ComfyUI, a stand-in with the same
encode/decode contract outside it (tests, scripts).

Both: encode(images [B, H, W, C] in 0..1) -> unscaled latents [B, 4, H/8, W/8]; decode(unscaled latents)
-> images [B, H, W, 3] in 0..1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..pixart_core.vae import load_vae
from ..pixart_core.vae.convert import to_ldm_state_dict
from . import host


class PlainVAE:
    """pixart_core's AutoencoderKL behind comfy.sd.VAE's encode/decode contract (used outside ComfyUI)."""

    def __init__(self, model: torch.nn.Module):
        self.handle = host.managed(model, kind="vae")

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images [B, H, W, C] in 0..1 (centre-cropped to multiples of 8) -> unscaled latents [B, 4, H/8, W/8]."""
        model = host.load_on_device(self.handle)
        top, left = pixels.shape[1] % 8 // 2, pixels.shape[2] % 8 // 2
        pixels = pixels[:, top:top + pixels.shape[1] // 8 * 8, left:left + pixels.shape[2] // 8 * 8, :3]  # [B, H, W, 3]
        images = pixels.movedim(-1, 1).to(model.device) * 2.0 - 1.0  # [B, 3, H, W] in -1..1
        return model.encode(images).float().cpu()  # [B, 4, H/8, W/8]

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Unscaled latents [B, 4, h, w] -> images [B, 8h, 8w, 3] in 0..1."""
        model = host.load_on_device(self.handle)
        images = model.decode(latent.to(model.device))  # [B, 3, H, W] in about -1..1
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).cpu()  # [B, H, W, 3]


def to_comfy_vae(model: torch.nn.Module, source: Path) -> Any:
    """A `comfy.sd.VAE` holding `model`'s weights (converted to the LDM layout ComfyUI reads); ValueError
    naming `source` when ComfyUI's VAE cannot hold the architecture."""
    cfg, widths = model.config, list(model.config.block_out_channels)
    if cfg.norm_num_groups != 32 or any(w % widths[0] for w in widths) or not cfg.use_quant_conv:
        raise ValueError(f"{source}: ComfyUI's VAE cannot hold this layout (widths {widths}, "
                         f"{cfg.norm_num_groups} norm groups, quant_conv {cfg.use_quant_conv})")
    ddconfig = {"double_z": True, "z_channels": cfg.latent_channels, "resolution": 256, "in_channels": cfg.in_channels,
                "out_ch": cfg.out_channels, "ch": widths[0], "ch_mult": [w // widths[0] for w in widths],
                "num_res_blocks": cfg.layers_per_block, "attn_resolutions": [], "dropout": 0.0}
    state = to_ldm_state_dict(model.state_dict(), len(widths))
    vae = host.comfy_module("comfy.sd").VAE(
        sd=state, config={"params": {"embed_dim": cfg.latent_channels, "ddconfig": ddconfig}})
    missing = sorted(set(vae.first_stage_model.state_dict()) - set(state))
    if missing:
        raise ValueError(f"{source}: ComfyUI's VAE has weights the file lacks: {missing[:5]}")
    return vae


def load_core_vae(path: Path) -> Any:
    """Load an SD-1.x/SDXL VAE file or diffusers folder (anything `pixart_core.vae.load_vae` reads) as a core VAE:
    a `comfy.sd.VAE` in ComfyUI (core VAE nodes accept it), a PlainVAE outside."""
    model = load_vae(path)  # float32, CPU
    return to_comfy_vae(model, path) if host.in_comfyui() else PlainVAE(model)
