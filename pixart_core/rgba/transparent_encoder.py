"""LayerDiffuse's latent transparency offset encoder, the colour bleed it is fed, and the grey composite.

The method (arXiv 2402.17113, "latent transparency"): the ordinary VAE encodes the RGBA image composited over
mid-grey; a small conv net (`LatentTransparencyOffsetEncoder` in lllyasviel/sd-forge-layerdiffuse
`lib_layerdiffusion/models.py`) reads [alpha, colour bled into the transparent area] and writes a 4-channel offset
at 1/8 size; the latent is `mean + std * offset * offset_scale` in the raw (unscaled) VAE space. The offset scale
depends on the file family (see `transparent_load.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: (in, out, stride) of the nine 3x3 convs; SiLU between them (Sequential indices 0, 2, ..., 16).
OFFSET_ENCODER_CONVS = ((4, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1),
                        (128, 256, 2), (256, 256, 1), (256, 4, 1))
_BLEED_STEP = 1.2  # each pyramid level is 1/1.2 the size of the one below (upstream `build_alpha_pyramid`, dk)


class LatentTransparencyOffsetEncoder(nn.Module):
    """[B,4,H,W] (alpha, padded colour; 0..1) -> raw offset [B,4,H/8,W/8]; keys `blocks.{0,2,...,16}.*`."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout, stride) in enumerate(OFFSET_ENCODER_CONVS):
            if i:
                layers.append(nn.SiLU())
            layers.append(nn.Conv2d(cin, cout, 3, stride=stride, padding=1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)  # [B, 4, H/8, W/8]


def pad_rgb(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Straight colour [B,3,H,W] with the colour bled smoothly into transparent areas ([B,3,H,W], 0..1).

    `alpha` is [B,1,H,W] in 0..1. A pyramid of area-downscaled premultiplied colour and alpha (each level 1/1.2 of
    the one below, down to a side of 1) is collapsed from the top: the top colour is the alpha-weighted mean, and
    each finer level keeps its own premultiplied colour and fills the rest from the bilinearly upscaled coarser
    result, `fg = c*a + up(fg) * (1 - a)`. Where alpha is 1 the colour is kept; where alpha is 0 it comes from the
    surroundings (LayerDiffuse's `pad_rgb` in lib_layerdiffusion/models.py builds the same kind of pyramid).
    """
    if rgb.ndim != 4 or rgb.shape[1] != 3 or alpha.ndim != 4 or alpha.shape[1] != 1:
        raise ValueError(f"pad_rgb needs rgb [B, 3, H, W] and alpha [B, 1, H, W], got {tuple(rgb.shape)} and "
                         f"{tuple(alpha.shape)}")
    if rgb.shape[0] != alpha.shape[0] or rgb.shape[2:] != alpha.shape[2:]:
        raise ValueError(f"pad_rgb: rgb {tuple(rgb.shape)} and alpha {tuple(alpha.shape)} differ in batch or size")
    dtype = rgb.dtype if rgb.dtype in (torch.float32, torch.float64) else torch.float32
    alpha = alpha.to(dtype).clamp(0, 1)  # [B, 1, H, W]
    premultiplied = rgb.to(dtype) * alpha  # [B, 3, H, W]
    levels = [(premultiplied, alpha)]
    while min(levels[-1][1].shape[2:]) > 1:
        height, width = levels[-1][1].shape[2:]
        size = (max(1, int(height / _BLEED_STEP)), max(1, int(width / _BLEED_STEP)))
        color, weight = levels[-1]
        levels.append((F.interpolate(color, size=size, mode="area"), F.interpolate(weight, size=size, mode="area")))
    top_color, top_alpha = levels[-1]
    fg = top_color.sum(dim=(2, 3), keepdim=True) / top_alpha.sum(dim=(2, 3), keepdim=True).clamp_min(1e-8)  # [B,3,1,1]
    for color, weight in reversed(levels):
        fg = F.interpolate(fg, size=color.shape[2:], mode="bilinear", align_corners=False)  # [B, 3, h, w]
        fg = color + fg * (1.0 - weight)
    return fg.to(rgb.dtype if rgb.is_floating_point() else torch.float32)


def grey_composite(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The RGBA image flattened onto mid-grey, [B,3,H,W] in 0..1: what the ordinary VAE encodes (upstream CLI
    `lib_layerdiffuse/vae.py` feeds `(rgb*2-1)*alpha` in -1..1, the same picture)."""
    return 0.5 + (rgb - 0.5) * alpha


class TransparentEncoder(nn.Module):
    """A loaded offset encoder. Attributes: `net` (released key names), `family`, `latent_space`,
    `offset_scale` (the offset's multiplier before it is scaled by the VAE std), `name`."""

    def __init__(self, net: LatentTransparencyOffsetEncoder, *, family: str | None = None,
                 latent_space: str | None = None, offset_scale: float = 1.0, name: str = ""):
        super().__init__()
        self.net = net
        self.family = family
        self.latent_space = latent_space
        self.offset_scale = offset_scale
        self.name = name

    @property
    def dtype(self) -> torch.dtype:
        return self.net.blocks[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.net.blocks[0].weight.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,4,H,W] (alpha, then padded colour; 0..1; H, W multiples of 8) -> raw offset [B,4,H/8,W/8]
        (not yet multiplied by `offset_scale`), in `x`'s dtype and device."""
        if x.ndim != 4 or x.shape[1] != 4:
            raise ValueError(f"the offset encoder takes [B, 4, H, W] (alpha, then padded colour), got {tuple(x.shape)}")
        if x.shape[2] % 8 or x.shape[3] % 8:
            raise ValueError(f"the offset encoder needs sides that are multiples of 8, got {tuple(x.shape[2:])}")
        out = self.net(x.to(self.device, self.dtype))  # [B, 4, H/8, W/8]
        return out.to(x.device, x.dtype if x.is_floating_point() else torch.float32)

    @torch.no_grad()
    def encode(self, rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Raw offset [B,4,H/8,W/8] of straight colour `rgb` [B,3,H,W] and `alpha` [B,1,H,W] (0..1)."""
        return self(torch.cat([alpha.to(rgb.dtype), pad_rgb(rgb, alpha)], dim=1))  # [B, 4, H, W] in

    def offset_latent(self, mean: torch.Tensor, std: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """The raw (unscaled) VAE latent carrying the transparency: `mean + std * offset * offset_scale`, where
        mean/std are the ordinary VAE's posterior of the grey composite. Multiply by the VAE scaling factor to
        get the sampler's latent; the decoder takes it back divided (its `latent_scale` is 1)."""
        return mean + std * offset.to(mean) * self.offset_scale
