"""Configuration of the KL autoencoder used by Stable Diffusion 1.x/2.x and SDXL (Rombach et al., arXiv:2112.10752).

PixArt-α decodes with the SD latent space (`sd-vae-ft-ema`, latents scaled by 0.18215); PixArt-Σ with the
SDXL VAE (0.13025). Both VAEs share one architecture and differ only in their weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SD_SCALING_FACTOR = 0.18215
SDXL_SCALING_FACTOR = 0.13025


@dataclass(frozen=True)
class LatentSpace:
    """A VAE latent space: the scale the diffusion model sees its latents at, and ComfyUI's name for it."""

    scaling_factor: float
    comfy_latent_format: str  # the class in ComfyUI's comfy/latent_formats.py (latent previews)


#: The latent spaces PixArt works in, by name: SD-1.x (PixArt-α) and SDXL (PixArt-Σ).
LATENT_SPACES = {"sd15": LatentSpace(SD_SCALING_FACTOR, "SD15"), "sdxl": LatentSpace(SDXL_SCALING_FACTOR, "SDXL")}

DOWN_BLOCK_TYPE = "DownEncoderBlock2D"
UP_BLOCK_TYPE = "UpDecoderBlock2D"
_DIFFUSERS_FIELDS = (
    "in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
    "scaling_factor", "shift_factor", "force_upcast", "use_quant_conv", "use_post_quant_conv",
    "mid_block_add_attention")


@dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of an `AutoencoderKL` (field names follow the diffusers `config.json`).

    Parameters:
        in_channels / out_channels: image channels (3).
        block_out_channels: width of each resolution level, shallow to deep ((128, 256, 512, 512) for SD/SDXL);
            the image is downsampled 2x between levels, so the latent is 2**(levels-1) times smaller (8x).
        layers_per_block: ResNet blocks per encoder level (2); decoder levels have one more.
        latent_channels: latent channels (4).
        norm_num_groups: GroupNorm groups (32).
        scaling_factor: multiply latents by this before the diffusion model (None when unknown, e.g. a bare
            single-file VAE with nothing naming its family).
        shift_factor: subtracted before scaling (None for SD/SDXL).
        force_upcast: the weights overflow in float16 (true for the original SDXL VAE); loading in float16
            then keeps float32 weights.
        use_quant_conv / use_post_quant_conv: the 1x1 convs around the latent (present in SD/SDXL).
        mid_block_add_attention: the middle blocks carry a single-head self-attention (present in SD/SDXL).
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float | None = None
    shift_factor: float | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if not self.block_out_channels:
            raise ValueError("block_out_channels must name at least one level")
        for width in self.block_out_channels:
            if width % self.norm_num_groups:
                raise ValueError(f"block width {width} is not divisible by norm_num_groups {self.norm_num_groups}")
        if self.layers_per_block < 1 or self.latent_channels < 1:
            raise ValueError("layers_per_block and latent_channels must be positive")

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel along one side (8 for SD/SDXL)."""
        return 2 ** (self.num_levels - 1)

    def to_diffusers(self) -> dict[str, Any]:
        """The `config.json` dict that diffusers' `AutoencoderKL` reads."""
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        data["block_out_channels"] = list(self.block_out_channels)
        if data["scaling_factor"] is None:
            data["scaling_factor"] = SD_SCALING_FACTOR  # diffusers needs a number; ours stays None
        return {
            "_class_name": "AutoencoderKL",
            **data,
            "down_block_types": [DOWN_BLOCK_TYPE] * self.num_levels,
            "up_block_types": [UP_BLOCK_TYPE] * self.num_levels,
            "act_fn": "silu",
            "sample_size": 512,
        }

    @classmethod
    def from_diffusers(cls, data: dict[str, Any], source: str = "config.json") -> "VAEConfig":
        """Read a diffusers `AutoencoderKL` config dict; ValueError on another class or unsupported blocks."""
        class_name = data.get("_class_name", "AutoencoderKL")
        if class_name != "AutoencoderKL":
            raise ValueError(f"{source}: describes a {class_name!r}, not an AutoencoderKL VAE")
        levels = len(data.get("block_out_channels", cls.block_out_channels))
        for key, want in (("down_block_types", DOWN_BLOCK_TYPE), ("up_block_types", UP_BLOCK_TYPE)):
            kinds = data.get(key, [want] * levels)
            if any(kind != want for kind in kinds) or len(kinds) != levels:
                raise ValueError(f"{source}: {key} {kinds} is not {levels} x {want!r} (unsupported VAE)")
        if data.get("act_fn", "silu") != "silu":
            raise ValueError(f"{source}: act_fn {data['act_fn']!r} is not 'silu' (unsupported VAE)")
        known = {k: data[k] for k in _DIFFUSERS_FIELDS if data.get(k) is not None}
        if "scaling_factor" not in known:
            known["scaling_factor"] = SD_SCALING_FACTOR  # diffusers' default
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**known, extra=extra)
