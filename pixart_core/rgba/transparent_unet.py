"""LayerDiffuse's transparent decoder network `UNet1024`, in plain PyTorch.

The network (arXiv 2402.17113; released as `UNet1024` in lllyasviel/sd-forge-layerdiffuse
`lib_layerdiffusion/models.py`) maps the RGB image that the ordinary SD/SDXL VAE decoded from a latent, plus
that latent, to 4 channels: alpha, then straight (unpremultiplied) colour. It is a diffusers `UNet2DModel`-style
U-Net without time embedding: 7 down blocks (the last three with self-attention), a mid block, 7 up blocks (the
first three with self-attention) and GroupNorm with 4 groups. The latent enters through a zero-initialised 1x1
conv added to the features at 1/8 resolution, just before the fourth down block.

Parameter and buffer names equal the released state dicts (diffusers naming: `down_blocks.N.resnets.M.conv1`,
`...attentions.M.to_q`, `...downsamplers.0.conv`, `mid_block.*`, `up_blocks.*`, `conv_norm_out`, `conv_out`), so
the released files load with `strict=True`. Layer semantics follow diffusers' `models/resnet.py`
(`ResnetBlock2D`, `Downsample2D`, `Upsample2D`) and `models/attention_processor.py` (`Attention` with group norm
and a residual connection), written here from those definitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: The released configuration (upstream `UNet1024.__init__` defaults).
RELEASED_WIDTHS = (32, 32, 64, 128, 256, 512, 512)
NUM_BLOCKS = len(RELEASED_WIDTHS)
ATTENTION_DOWN_BLOCKS = (4, 5, 6)  # AttnDownBlock2D; the up side mirrors it: up blocks 0, 1, 2
LATENT_INJECT_BLOCK = 3  # the latent is added to the input of this down block (features at 1/8 size)
LAYERS_PER_BLOCK = 2  # resnets per down block; up blocks have one more
HEAD_DIM = 8
NORM_GROUPS = 4
NORM_EPS = 1e-5


@dataclass(frozen=True)
class TransparentUNetConfig:
    """Hyper-parameters that vary between files: only the channel widths (read from the file's shapes)."""

    widths: tuple[int, ...] = RELEASED_WIDTHS
    in_channels: int = 3
    out_channels: int = 4
    latent_channels: int = 4

    def __post_init__(self):
        if len(self.widths) != NUM_BLOCKS:
            raise ValueError(f"widths must have {NUM_BLOCKS} entries, got {self.widths}")
        bad = [w for w in self.widths if w <= 0 or w % HEAD_DIM or w % NORM_GROUPS]
        if bad:
            raise ValueError(f"widths must be positive multiples of {HEAD_DIM} (head size), got {self.widths}")

    @property
    def total_downscale(self) -> int:
        """Input sides must be multiples of this (6 stride-2 downsamples)."""
        return 2 ** (NUM_BLOCKS - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a (1x1-projected when widths differ) skip; no time embedding."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B, Cout, H, W]
        h = self.conv2(F.silu(self.norm2(h)))  # [B, Cout, H, W]
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)  # [B, Cout, H, W]
        return skip + h


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, GroupNorm first and a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.heads = channels // HEAD_DIM
        self.group_norm = _norm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, h * w, self.heads, HEAD_DIM).transpose(1, 2)  # [B, heads, HW, 8]

        q, k, v = split(self.to_q(tokens)), split(self.to_k(tokens)), split(self.to_v(tokens))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, 8]
        out = self.to_out[0](out.transpose(1, 2).reshape(b, h * w, c))  # [B, HW, C]
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """3x3 stride-2 conv (padding 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # [B, C, H/2, W/2]


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling has no bf16 kernel on some backends
            x = x.float()
        x = F.interpolate(x, scale_factor=2.0, mode="nearest").to(dtype)  # [B, C, 2H, 2W]
        return self.conv(x)


class DownBlock(nn.Module):
    """Resnets (each followed by attention when `attention`), then an optional downsample; returns the skips."""

    def __init__(self, in_channels: int, out_channels: int, attention: bool, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(LAYERS_PER_BLOCK))
        if attention:
            self.attentions = nn.ModuleList(SpatialSelfAttention(out_channels) for _ in range(LAYERS_PER_BLOCK))
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if hasattr(self, "attentions"):
                x = self.attentions[i](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """Resnets over [features, skip] (each followed by attention when `attention`), then an optional upsample."""

    def __init__(self, skip_channels: list[int], prev_channels: int, out_channels: int, attention: bool,
                 upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock((prev_channels if i == 0 else out_channels) + skip, out_channels)
            for i, skip in enumerate(skip_channels))
        if attention:
            self.attentions = nn.ModuleList(SpatialSelfAttention(out_channels) for _ in skip_channels)
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1))  # [B, C + Cskip, H, W] -> [B, Cout, H, W]
            if hasattr(self, "attentions"):
                x = self.attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """Resnet, self-attention, resnet at the lowest resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels), ResnetBlock(channels, channels)])
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class TransparentUNet(nn.Module):
    """UNet1024: (decoded RGB [B,3,H,W] in 0..1, latent [B,4,H/8,W/8]) -> [B,4,H,W] (alpha, colour), unclipped.

    H and W must be multiples of `config.total_downscale` (64); `TransparentDecoder` pads other sizes."""

    def __init__(self, config: TransparentUNetConfig = TransparentUNetConfig()):
        super().__init__()
        self.config = config
        widths = config.widths
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.latent_conv_in = nn.Conv2d(config.latent_channels, widths[LATENT_INJECT_BLOCK - 1], 1)
        self.down_blocks = nn.ModuleList()
        skip_channels = [widths[0]]  # channels of each skip tensor, in the order they are produced
        for i, width in enumerate(widths):
            last = i == NUM_BLOCKS - 1
            self.down_blocks.append(DownBlock(widths[max(i - 1, 0)], width, i in ATTENTION_DOWN_BLOCKS, not last))
            skip_channels += [width] * (LAYERS_PER_BLOCK + (0 if last else 1))
        self.mid_block = MidBlock(widths[-1])
        self.up_blocks = nn.ModuleList()
        prev = widths[-1]
        for i, width in enumerate(reversed(widths)):
            mine = [skip_channels.pop() for _ in range(LAYERS_PER_BLOCK + 1)]
            attention = (NUM_BLOCKS - 1 - i) in ATTENTION_DOWN_BLOCKS
            self.up_blocks.append(UpBlock(mine, prev, width, attention, i != NUM_BLOCKS - 1))
            prev = width
        self.conv_norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], config.out_channels, 3, padding=1)

    def forward(self, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        injected = self.latent_conv_in(latent)  # [B, widths[2], H/8, W/8]
        x = self.conv_in(image)  # [B, widths[0], H, W]
        skips = [x]
        for i, block in enumerate(self.down_blocks):
            if i == LATENT_INJECT_BLOCK:
                x = x + injected
            x, block_skips = block(x)
            skips += block_skips
        x = self.mid_block(x)  # [B, widths[-1], H/64, W/64]
        for block in self.up_blocks:
            x = block(x, skips)
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # [B, 4, H, W]
