"""Building blocks of the KL autoencoder (Rombach et al., arXiv:2112.10752, App. G; the LDM `Encoder`/`Decoder`).

Parameter names follow the diffusers layout (`resnets`, `downsamplers.0.conv`, `attentions.0.to_q`, ...), so a
diffusers state dict loads as is; `convert.py` maps the original LDM names onto these.
Numerics: GroupNorm(eps=1e-6), SiLU, single-head attention over all pixels in the middle blocks, nearest 2x
upsampling, and a stride-2 3x3 conv after zero padding of one pixel on the right and bottom only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-6


def group_norm(channels: int, groups: int, dtype=None, device=None) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=NORM_EPS, affine=True, dtype=dtype, device=device)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: x + conv(silu(norm(conv(silu(norm(x)))))), 1x1 conv shortcut on width change."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.norm1 = group_norm(in_channels, groups, **kw)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, **kw)
        self.norm2 = group_norm(out_channels, groups, **kw)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, **kw)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1, **kw) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B, C_out, H, W]
        h = self.conv2(F.silu(self.norm2(h)))  # [B, C_out, H, W]
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)  # [B, C_out, H, W]
        return x + h  # [B, C_out, H, W]


class Downsample(nn.Module):
    """Halve H and W: zero-pad (left 0, right 1, top 0, bottom 1), then a 3x3 stride-2 conv without padding."""

    def __init__(self, channels: int, dtype=None, device=None):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 1, 0, 1))  # [B, C, H+1, W+1]
        return self.conv(x)  # [B, C, H/2, W/2]


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int, dtype=None, device=None):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # [B, C, 2H, 2W]
        return self.conv(x)  # [B, C, 2H, 2W]


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the H*W pixels with a residual: x + out(softmax(q k^T / sqrt(C)) v)."""

    def __init__(self, channels: int, groups: int, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.group_norm = group_norm(channels, groups, **kw)
        self.to_q = nn.Linear(channels, channels, **kw)
        self.to_k = nn.Linear(channels, channels, **kw)
        self.to_v = nn.Linear(channels, channels, **kw)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels, **kw)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, H*W, C]
        q = self.to_q(tokens).unsqueeze(1)  # [B, 1, H*W, C]
        k = self.to_k(tokens).unsqueeze(1)  # [B, 1, H*W, C]
        v = self.to_v(tokens).unsqueeze(1)  # [B, 1, H*W, C]
        attended = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # [B, H*W, C]
        out = self.to_out[0](attended)  # [B, H*W, C]
        return x + out.transpose(1, 2).reshape(b, c, h, w)  # [B, C, H, W]


class MidBlock(nn.Module):
    """ResNet, optional self-attention, ResNet at the deepest resolution."""

    def __init__(self, channels: int, groups: int, add_attention: bool, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, **kw) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups, **kw)] if add_attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)  # [B, C, h, w]
        for attention in self.attentions:
            x = attention(x)  # [B, C, h, w]
        return self.resnets[1](x)  # [B, C, h, w]


class DownLevel(nn.Module):
    """One encoder resolution level: `num_layers` ResNet blocks, then an optional 2x downsample."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool,
                 dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.resnets = nn.ModuleList([ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, **kw)
                                      for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([Downsample(out_channels, **kw)] if downsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)  # [B, C_out, H, W]
        for down in self.downsamplers:
            x = down(x)  # [B, C_out, H/2, W/2]
        return x


class UpLevel(nn.Module):
    """One decoder resolution level: `num_layers` ResNet blocks, then an optional 2x upsample."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool,
                 dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.resnets = nn.ModuleList([ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, **kw)
                                      for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample(out_channels, **kw)] if upsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)  # [B, C_out, H, W]
        for up in self.upsamplers:
            x = up(x)  # [B, C_out, 2H, 2W]
        return x
