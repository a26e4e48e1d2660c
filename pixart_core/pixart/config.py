"""PixArt transformer configuration and the released variants (PixArt-α arXiv:2310.00426, PixArt-Σ arXiv:2403.04692)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..vae.config import LATENT_SPACES


@dataclass(frozen=True)
class Family:
    """What a PixArt family fixes besides the DiT's shape: its name, caption length and VAE latent space."""

    display_name: str
    max_length: int  # T5 tokens the family was trained with
    latent_space: str  # a key of LATENT_SPACES


#: The one source of the family facts. Caption lengths: PixArt-sigma `scripts/inference.py`
#: (`max_sequence_length = {"alpha": 120, "sigma": 300}`); latent spaces: the VAEs of the two releases.
FAMILIES = {"alpha": Family("PixArt-α", 120, "sd15"), "sigma": Family("PixArt-Σ", 300, "sdxl")}


@dataclass(frozen=True)
class PixArtConfig:
    """Hyper-parameters of a PixArt DiT.

    Parameters:
        hidden_size: token width (1152 for every released XL/2 model).
        depth: number of transformer blocks (28; community "900M" models use 42).
        num_heads: attention heads (16, head dim 72).
        patch_size: latent patch size (2).
        in_channels / out_channels: latent channels in, and out (2 * in with learned sigma).
        mlp_ratio: MLP width / hidden size (4.0).
        caption_channels: text-encoder width (4096 for T5-XXL).
        model_max_length: T5 tokens the model was trained with (α 120, Σ 300).
        sample_size: latent side at the training resolution (image size // 8: 32, 64, 128, 256).
        pe_interpolation: position-embedding interpolation (Σ-256 0.5, 512 1, 1024 2, 2K 4).
        micro_condition: size and aspect-ratio embedders (α-1024-MS and models built on it).
        family: a key of FAMILIES: "alpha" (SD-1.x latent space) or "sigma" (SDXL latent space).
        qk_norm: LayerNorm on q and k in self-attention (Σ code path, no released checkpoint).
        kv_compress_layers: blocks whose self-attention K/V are downsampled (Σ code path).
        kv_compress_ratio / kv_compress_sampling: downsampling factor and method ("conv", "ave", "uniform").
        has_null_caption: the checkpoint carries the learned null caption `y_embedding`.
    """

    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    patch_size: int = 2
    in_channels: int = 4
    out_channels: int = 8
    mlp_ratio: float = 4.0
    caption_channels: int = 4096
    model_max_length: int = 120
    sample_size: int = 128
    pe_interpolation: float = 2.0
    micro_condition: bool = False
    family: str = "alpha"
    qk_norm: bool = False
    kv_compress_layers: tuple[int, ...] = field(default_factory=tuple)
    kv_compress_ratio: int = 1
    kv_compress_sampling: str = "conv"
    has_null_caption: bool = False

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(map(repr, FAMILIES))}, not {self.family!r}")
        if self.kv_compress_sampling not in ("conv", "ave", "uniform"):
            raise ValueError(f"unknown kv_compress_sampling {self.kv_compress_sampling!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def base_size(self) -> int:
        """Patch-grid side at the training resolution (the PE formula's base_size)."""
        return self.sample_size // self.patch_size

    @property
    def resolution(self) -> int:
        """Training image side in pixels."""
        return self.sample_size * 8

    @property
    def learned_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def latent_space(self) -> str:
        """Name of the VAE latent space the model works in ("sd15" or "sdxl")."""
        return FAMILIES[self.family].latent_space

    @property
    def vae_scale_factor(self) -> float:
        return LATENT_SPACES[self.latent_space].scaling_factor

    @property
    def variant(self) -> str:
        """Short name such as 'sigma-1024', 'alpha-1024-ms' or 'sigma-1024-900m'."""
        size = {32: "256", 64: "512", 128: "1024", 256: "2k"}.get(self.sample_size, f"{self.resolution}")
        name = f"{self.family}-{size}"
        if self.micro_condition:
            name += "-ms"
        if self.depth == 42:
            name += "-900m"
        elif self.depth != 28:
            name += f"-d{self.depth}"
        return name

    def with_(self, **changes) -> "PixArtConfig":
        return replace(self, **changes)


_XL2 = PixArtConfig()

_ALPHA_TOKENS, _SIGMA_TOKENS = FAMILIES["alpha"].max_length, FAMILIES["sigma"].max_length

#: Released and community variants by name (model cards of PixArt-alpha/PixArt-alpha and PixArt-alpha/PixArt-Sigma
#: on Hugging Face; "900m" is the community depth-42 Σ).
PRESETS: dict[str, PixArtConfig] = {
    "alpha-256": _XL2.with_(sample_size=32, pe_interpolation=1.0, family="alpha", has_null_caption=True),
    "alpha-512": _XL2.with_(sample_size=64, pe_interpolation=1.0, family="alpha", has_null_caption=True),
    "alpha-1024-ms": _XL2.with_(sample_size=128, pe_interpolation=2.0, family="alpha", micro_condition=True,
                                has_null_caption=True),
    "sigma-256": _XL2.with_(sample_size=32, pe_interpolation=0.5, family="sigma", model_max_length=_SIGMA_TOKENS),
    "sigma-512": _XL2.with_(sample_size=64, pe_interpolation=1.0, family="sigma", model_max_length=_SIGMA_TOKENS),
    "sigma-1024": _XL2.with_(sample_size=128, pe_interpolation=2.0, family="sigma", model_max_length=_SIGMA_TOKENS),
    "sigma-2k": _XL2.with_(sample_size=256, pe_interpolation=4.0, family="sigma", model_max_length=_SIGMA_TOKENS),
    "sigma-1024-900m": _XL2.with_(depth=42, sample_size=128, pe_interpolation=2.0, family="sigma",
                                  model_max_length=_SIGMA_TOKENS),
}
# LCM (PixArt-δ) and the ControlNet base are α-1024-MS weights with another sampler or an extra branch.
PRESETS["alpha-1024-ms-lcm"] = PRESETS["alpha-1024-ms"]


def pe_interpolation_for(sample_size: int, family: str) -> float:
    """PE interpolation of a model trained at `sample_size` latents: resolution / 512 (PixArt-sigma
    `scripts/inference.py`), except α-256, trained with the base config's `lewei_scale = 1.0` (PixArt-alpha
    `configs/PixArt_xl2_internal.py`)."""
    if family == "alpha" and sample_size == 32:
        return 1.0
    return max(sample_size / 64, 0.5)
