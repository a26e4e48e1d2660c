"""Tiny random-weight VAEs in every layout `load_vae` accepts.

The architecture is the real one (4 levels, 8x downscale, mid attention, GroupNorm with 32 groups, which the
single-file loader assumes) at widths (32, 32, 64, 64) and one ResNet per encoder level (about 1M parameters).
Weights are seeded and rounded to float16-representable values, so the float16 single files and the float32
diffusers folders hold exactly the same numbers. Norm weights and biases are randomised too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .files import save_safetensors, save_torch, write_json
from ..vae.config import SD_SCALING_FACTOR, SDXL_SCALING_FACTOR, VAEConfig
from ..vae.convert import to_ldm_state_dict, to_legacy_diffusers_state_dict
from ..vae.model import AutoencoderKL

TINY_WIDTHS = (32, 32, 64, 64)


def tiny_vae_config(scaling_factor: float | None = SD_SCALING_FACTOR, force_upcast: bool = False) -> VAEConfig:
    """The tiny VAE's config: SD-like by default, SDXL-like with its scaling factor and force_upcast."""
    return VAEConfig(block_out_channels=TINY_WIDTHS, layers_per_block=1, latent_channels=4, norm_num_groups=32,
                     scaling_factor=scaling_factor, force_upcast=force_upcast)


def random_vae_state_dict(cfg: VAEConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded float32 weights (float16-representable): convs/linears ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.2^2)."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoencoderKL(cfg).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        shape = shapes[key]
        noise = torch.randn(shape, generator=generator)  # [*shape]
        is_norm = "norm" in key.rsplit(".", 2)[-2]
        if is_norm and key.endswith(".weight"):
            value = 1.0 + 0.2 * noise
        elif key.endswith(".bias"):
            value = 0.2 * noise if is_norm else 0.05 * noise
        else:
            fan_in = int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
            value = noise / fan_in ** 0.5
        state[key] = value.half().float()
    return state


def _diffusers_folder(folder: Path, cfg: VAEConfig, state: dict[str, torch.Tensor]) -> Path:
    write_json({**cfg.to_diffusers(), "_diffusers_version": "0.30.0"}, folder / "config.json")
    save_safetensors(state, folder / "diffusion_pytorch_model.safetensors")
    return folder


def _half(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.half() for k, v in state.items()}


def write_tiny_vaes(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny VAEs under `out_dir`; returns {name: path}.

    sd_diffusers/, sdxl_diffusers/      diffusers folders (float32; scaling 0.18215 / 0.13025, SDXL force_upcast)
    sd_legacy_diffusers/                diffusers folder, .bin, pre-0.14 attention names (query/key/value/proj_attn)
    sd_ldm.safetensors, sd_ldm.pt       LDM single files (float16; .pt wrapped in {"state_dict": ...})
    sdxl_ldm.safetensors                LDM single file of the SDXL-like weights
    sd_vae_prefixed.safetensors         LDM keys under "vae."
    sdxl_diffusers_single.safetensors   a diffusers-layout state dict as one file (ComfyUI users do this)
    sd_full_checkpoint.safetensors      "first_stage_model." LDM keys + unet/text-encoder keys (SD-1.x style)
    The sd_* files hold the SD-like weights, the sdxl_* files the SDXL-like ones (seed + 1).
    """
    out = Path(out_dir)
    sd_cfg = tiny_vae_config(SD_SCALING_FACTOR, force_upcast=False)
    sdxl_cfg = tiny_vae_config(SDXL_SCALING_FACTOR, force_upcast=True)
    sd = random_vae_state_dict(sd_cfg, seed)
    sdxl = random_vae_state_dict(sdxl_cfg, seed + 1)
    sd_ldm = to_ldm_state_dict(sd, sd_cfg.num_levels)
    paths = {
        "sd_diffusers": _diffusers_folder(out / "sd_diffusers", sd_cfg, sd),
        "sdxl_diffusers": _diffusers_folder(out / "sdxl_diffusers", sdxl_cfg, sdxl),
    }
    legacy = out / "sd_legacy_diffusers"
    write_json({**sd_cfg.to_diffusers(), "_diffusers_version": "0.2.0"}, legacy / "config.json")
    save_torch(_half(to_legacy_diffusers_state_dict(sd)), legacy / "diffusion_pytorch_model.bin")
    paths["sd_legacy_diffusers"] = legacy

    paths["sd_ldm_safetensors"] = out / "sd_ldm.safetensors"
    save_safetensors(_half(sd_ldm), paths["sd_ldm_safetensors"])
    paths["sd_ldm_pt"] = out / "sd_ldm.pt"
    save_torch({"state_dict": _half(sd_ldm)}, paths["sd_ldm_pt"])
    paths["sdxl_ldm_safetensors"] = out / "sdxl_ldm.safetensors"
    save_safetensors(_half(to_ldm_state_dict(sdxl, sdxl_cfg.num_levels)), paths["sdxl_ldm_safetensors"])
    paths["sd_vae_prefixed"] = out / "sd_vae_prefixed.safetensors"
    save_safetensors(_half(sd_ldm, "vae."), paths["sd_vae_prefixed"])
    paths["sdxl_diffusers_single"] = out / "sdxl_diffusers_single.safetensors"
    save_safetensors(_half(sdxl), paths["sdxl_diffusers_single"])

    generator = torch.Generator().manual_seed(seed + 2)
    others = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3, generator=generator),
        "model.diffusion_model.out.2.bias": torch.randn(4, generator=generator),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.randn(8, generator=generator),
        "alphas_cumprod": torch.linspace(0.999, 0.005, 16),
    }
    paths["sd_full_checkpoint"] = out / "sd_full_checkpoint.safetensors"
    save_safetensors({**_half(sd_ldm, "first_stage_model."), **_half(others)}, paths["sd_full_checkpoint"])
    return paths
