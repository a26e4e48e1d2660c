"""The SD-1.x / SDXL KL autoencoder (PixArt-α uses the SD latent space, scale 0.18215; PixArt-Σ SDXL's, 0.13025)."""

from .config import SD_SCALING_FACTOR, SDXL_SCALING_FACTOR, VAEConfig
from .load import load_vae
from .model import AutoencoderKL

__all__ = ["AutoencoderKL", "VAEConfig", "load_vae", "SD_SCALING_FACTOR", "SDXL_SCALING_FACTOR"]
