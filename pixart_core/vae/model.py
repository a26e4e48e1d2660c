"""KL-regularised autoencoder of latent diffusion (Rombach et al., arXiv:2112.10752): image <-> 8x smaller latent.

`encode` returns the UNSCALED latent (the posterior mean, or a posterior sample), `decode` takes an UNSCALED
latent; the diffusion model works on `latent * scaling_factor` (the caller scales, as diffusers' pipelines do).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .blocks import DownLevel, MidBlock, UpLevel, group_norm
from .config import VAEConfig
from .tiling import tiled_map

log = logging.getLogger(__name__)

DEFAULT_TILE = 64  # latent pixels per tile side (512 image pixels)
AUTO_TILE_AREA = 128 * 128  # latents larger than this (images above 1024x1024 pixels) are tiled automatically


class Encoder(nn.Module):
    """Image [B, 3, H, W] -> posterior moments [B, 2*latent, H/8, W/8] (before quant_conv)."""

    def __init__(self, cfg: VAEConfig, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        widths, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1, **kw)
        self.down_blocks = nn.ModuleList([
            DownLevel(widths[max(i - 1, 0)], widths[i], cfg.layers_per_block, groups,
                      downsample=i < len(widths) - 1, **kw)
            for i in range(len(widths))])
        self.mid_block = MidBlock(widths[-1], groups, cfg.mid_block_add_attention, **kw)
        self.conv_norm_out = group_norm(widths[-1], groups, **kw)
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)  # [B, C0, H, W]
        for level in self.down_blocks:
            x = level(x)  # [B, Ci, H/2^i, W/2^i]
        x = self.mid_block(x)  # [B, C_last, h, w]
        x = nn.functional.silu(self.conv_norm_out(x))  # [B, C_last, h, w]
        return self.conv_out(x)  # [B, 2*latent, h, w]


class Decoder(nn.Module):
    """Latent [B, latent, h, w] (after post_quant_conv) -> image [B, 3, 8h, 8w]."""

    def __init__(self, cfg: VAEConfig, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        widths, groups = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1, **kw)
        self.mid_block = MidBlock(widths[0], groups, cfg.mid_block_add_attention, **kw)
        self.up_blocks = nn.ModuleList([
            UpLevel(widths[max(i - 1, 0)], widths[i], cfg.layers_per_block + 1, groups,
                    upsample=i < len(widths) - 1, **kw)
            for i in range(len(widths))])
        self.conv_norm_out = group_norm(widths[-1], groups, **kw)
        self.conv_out = nn.Conv2d(widths[-1], cfg.out_channels, 3, padding=1, **kw)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)  # [B, C_last, h, w]
        x = self.mid_block(x)  # [B, C_last, h, w]
        for level in self.up_blocks:
            x = level(x)  # [B, Ci, h*2^i, w*2^i]
        x = nn.functional.silu(self.conv_norm_out(x))  # [B, C0, H, W]
        return self.conv_out(x)  # [B, 3, H, W]


class AutoencoderKL(nn.Module):
    """The SD-1.x/SDXL VAE. Build with `load_vae`; `encode` images in [-1, 1], `decode` unscaled latents.

    Tiling (both directions): `tile=None` tiles when the latent is larger than `tile_size` on a side (if the
    user set `vae.tile_size`), else when its area exceeds `AUTO_TILE_AREA` (128x128 latents, i.e. anything
    above 1024x1024 pixels: PixArt-Σ 2K is tiled, 1024 bins are not), and also falls back to tiles if an
    untiled pass runs out of GPU memory. `tile=True/False` forces it. Tiles are `tile_size` latent pixels
    (default 64 = 512 image pixels) with `tile_overlap` latent pixels of linear cross-fade (default
    tile_size // 4 = 16 = 128 image pixels). Tiled results differ slightly from untiled ones, because
    GroupNorm statistics and the middle attention see one tile at a time.

    float16 with `config.force_upcast` (the original SDXL VAE overflows in fp16): the loader keeps float32
    weights. Inputs are moved to the weights' device and dtype; outputs come back on the input's device and
    in its dtype.
    """

    def __init__(self, config: VAEConfig, dtype=None, device=None):
        super().__init__()
        self.config = config
        kw = dict(dtype=dtype, device=device)
        latent = config.latent_channels
        self.encoder = Encoder(config, **kw)
        self.decoder = Decoder(config, **kw)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1, **kw) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1, **kw) if config.use_post_quant_conv else None
        self.tile_size: int | None = None
        self.tile_overlap: int | None = None
        self.auto_tile_area: int = AUTO_TILE_AREA

    # ---- properties -------------------------------------------------------------------------------------

    @property
    def scaling_factor(self) -> float | None:
        return self.config.scaling_factor

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    @property
    def downscale(self) -> int:
        return self.config.downscale

    # ---- encode / decode --------------------------------------------------------------------------------

    def encode_moments(self, img: torch.Tensor, tile: bool | None = None) -> torch.Tensor:
        """Image [B, 3, H, W] in [-1, 1] -> posterior (mean, logvar) [B, 2*latent, H/8, W/8] in float32."""
        self._check_input(img, self.config.in_channels, "image")
        x = img.to(device=self.device, dtype=self.dtype)  # [B, 3, H, W]
        f = self.downscale
        grid = (-(-img.shape[-2] // f), -(-img.shape[-1] // f))
        if self._use_tiles(grid, tile):
            if img.shape[-2] % f or img.shape[-1] % f:
                raise ValueError(f"tiled encode needs an image side divisible by {f}, got {tuple(img.shape[-2:])}")
            return tiled_map(self._moments, x, grid=grid, tile=self._tile(), overlap=self._overlap(),
                             in_scale=f, out_scale=1, out_channels=2 * self.config.latent_channels)
        try:
            return self._moments(x).float()  # [B, 2*latent, h, w]
        except torch.OutOfMemoryError:
            if tile is not None:
                raise
            log.warning("VAE encode of %s ran out of memory; retrying in tiles", tuple(img.shape))
        torch.cuda.empty_cache()
        return self.encode_moments(img, tile=True)

    def encode(self, img: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               tile: bool | None = None) -> torch.Tensor:
        """Image [B, 3, H, W] in [-1, 1] -> UNSCALED latent [B, 4, H/8, W/8] in the image's dtype.

        The posterior mean by default; `sample=True` draws mean + std * noise with `torch.randn` from
        `generator` (drawn on the generator's device in float32, so it equals diffusers' sample for float32
        weights and the same generator state).
        """
        moments = self.encode_moments(img, tile=tile)  # [B, 2*latent, h, w]
        mean, logvar = moments.chunk(2, dim=1)  # [B, latent, h, w] each
        if sample:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # [B, latent, h, w]
            noise_device = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=mean.dtype)
            mean = mean + std * noise.to(mean.device)  # [B, latent, h, w]
        return mean.to(device=img.device, dtype=self._out_dtype(img))

    def decode(self, latent: torch.Tensor, tile: bool | None = None) -> torch.Tensor:
        """UNSCALED latent [B, 4, h, w] -> image [B, 3, 8h, 8w] in the latent's dtype.

        The image is roughly in [-1, 1] but NOT clamped: clamp (and map to [0, 1]) before saving or display.
        """
        self._check_input(latent, self.config.latent_channels, "latent")
        z = latent.to(device=self.device, dtype=self.dtype)  # [B, 4, h, w]
        f = self.downscale
        if self._use_tiles(tuple(latent.shape[-2:]), tile):
            image = tiled_map(self._decode, z, grid=tuple(latent.shape[-2:]), tile=self._tile(),
                              overlap=self._overlap(), in_scale=1, out_scale=f, out_channels=self.config.out_channels)
            return image.to(device=latent.device, dtype=self._out_dtype(latent))
        try:
            return self._decode(z).to(device=latent.device, dtype=self._out_dtype(latent))  # [B, 3, H, W]
        except torch.OutOfMemoryError:
            if tile is not None:
                raise
            log.warning("VAE decode of %s ran out of memory; retrying in tiles", tuple(latent.shape))
        torch.cuda.empty_cache()
        return self.decode(latent, tile=True)

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)  # [B, 2*latent, h, w]
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)  # [B, 2*latent, h, w]
        return moments

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)  # [B, latent, h, w]
        return self.decoder(z)  # [B, 3, 8h, 8w]

    # ---- helpers ----------------------------------------------------------------------------------------

    def _use_tiles(self, grid: tuple[int, int], tile: bool | None) -> bool:
        if tile is not None:
            return bool(tile)
        if self.tile_size is not None:
            return grid[0] > self.tile_size or grid[1] > self.tile_size
        return grid[0] * grid[1] > self.auto_tile_area

    def _tile(self) -> int:
        return int(self.tile_size or DEFAULT_TILE)

    def _overlap(self) -> int:
        overlap = self._tile() // 4 if self.tile_overlap is None else int(self.tile_overlap)
        return min(overlap, self._tile() // 2)

    def _out_dtype(self, x: torch.Tensor) -> torch.dtype:
        return x.dtype if x.is_floating_point() else self.dtype

    @staticmethod
    def _check_input(x: torch.Tensor, channels: int, what: str) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"VAE expects a {what} of shape [B, {channels}, H, W], got {tuple(x.shape)}")
