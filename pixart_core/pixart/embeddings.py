"""PixArt input embeddings: patches, 2-D sin-cos positions, timesteps, micro-conditions and captions.

Formulas follow PixArt-α (arXiv:2310.00426) / PixArt-Σ (arXiv:2403.04692) and the PixArt-alpha repository
(`diffusion/model/nets/PixArt_blocks.py` for the embedders, `get_2d_sincos_pos_embed` in
`diffusion/model/nets/PixArt.py` for positions). Module and parameter names equal the official checkpoint keys.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .blocks import GeluMlp
from .linear import ComputeLinear, linear

FREQUENCY_EMBEDDING_SIZE = 256


def timestep_sinusoid(values: Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE, max_period: float = 10000.0) -> Tensor:
    """[cos, sin] embedding of scalars (GLIDE/DiT): freq_i = exp(-ln(max_period) * i / (dim/2)); float32."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device)  # [half]
    freqs = torch.exp(exponent / half)  # [half]
    args = values.reshape(-1, 1).float() * freqs[None]  # [M, half]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [M, 2*half]
    if dim % 2:
        embedding = torch.nn.functional.pad(embedding, (0, 1))  # [M, dim]
    return embedding


def sincos_pos_embed_2d(dim: int, height: int, width: int, base_size: int, interpolation: float,
                        device: torch.device | str | None = None) -> Tensor:
    """Official 2-D sin-cos table [height*width, dim] in float64.

    Grid positions are float32 like the reference numpy code (`arange / (H / base_size) / interpolation`);
    the first dim/2 channels encode the column (w) coordinate, the last dim/2 the row (h); each half is
    [sin(pos * omega), cos(pos * omega)] with omega_k = 10000^(-k / (dim/4))."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    grid_h = torch.arange(height, dtype=torch.float32, device=device) / (height / base_size) / interpolation  # [h]
    grid_w = torch.arange(width, dtype=torch.float32, device=device) / (width / base_size) / interpolation  # [w]
    quarter = dim // 4
    omega = torch.arange(quarter, dtype=torch.float64, device=device) / quarter  # [D/4]
    omega = 1.0 / 10000.0 ** omega  # [D/4]
    angles_w = grid_w.double()[:, None] * omega[None]  # [w, D/4]
    angles_h = grid_h.double()[:, None] * omega[None]  # [h, D/4]
    emb_w = torch.cat([torch.sin(angles_w), torch.cos(angles_w)], dim=1)  # [w, D/2]
    emb_h = torch.cat([torch.sin(angles_h), torch.cos(angles_h)], dim=1)  # [h, D/2]
    table = torch.cat([emb_w[None].expand(height, width, -1), emb_h[:, None].expand(height, width, -1)], dim=-1)
    return table.reshape(height * width, dim)  # [h*w, D], row-major over (h, w)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens (Conv2d k = s = p), row-major token order."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int, *, dtype=None, device=None):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, (H/p)*(W/p), hidden]."""
        batch, channels, height, width = x.shape
        p = self.patch_size
        h, w = height // p, width // p
        # Patchify as one GEMM: same arithmetic as the strided convolution, and fast for every dtype.
        patches = x.reshape(batch, channels, h, p, w, p).permute(0, 2, 4, 1, 3, 5)  # [B, h, w, C, p, p]
        patches = patches.reshape(batch, h * w, channels * p * p)  # [B, N, C*p*p]
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)  # [hidden, C*p*p]
        return linear(patches, weight, self.proj.bias)  # [B, N, hidden]


class TimestepEmbedder(nn.Module):
    """256-d [cos, sin] sinusoid -> Linear -> SiLU -> Linear (keys `mlp.0`, `mlp.2`)."""

    def __init__(self, hidden_size: int, *, dtype=None, device=None):
        super().__init__()
        self.mlp = nn.Sequential(
            ComputeLinear(FREQUENCY_EMBEDDING_SIZE, hidden_size, dtype=dtype, device=device),
            nn.SiLU(),
            ComputeLinear(hidden_size, hidden_size, dtype=dtype, device=device),
        )

    def forward(self, values: Tensor) -> Tensor:
        """[M] scalars (float or int, fractional allowed) -> [M, hidden] in the compute dtype."""
        freq = timestep_sinusoid(values).to(self.mlp[0].weight.dtype)  # [M, 256]
        return self.mlp(freq)  # [M, hidden]


class SizeEmbedder(TimestepEmbedder):
    """Micro-condition embedder (α-1024-MS): each scalar embedded like a timestep, concatenated per row."""

    def forward(self, values: Tensor) -> Tensor:  # type: ignore[override]
        """[B, k] -> [B, k * hidden]."""
        batch = values.shape[0]
        return super().forward(values.reshape(-1)).reshape(batch, -1)  # [B, k*hidden]


class CaptionEmbedder(nn.Module):
    """T5 features -> hidden (Mlp fc1 -> GELU(tanh) -> fc2, keys `y_proj.fc1/fc2`).

    `y_embedding` [model_max_length, caption_channels] is the learned null caption (official CFG uncond),
    registered as a persistent buffer only when the checkpoint carries it."""

    def __init__(self, caption_channels: int, hidden_size: int, null_tokens: int | None, *, dtype=None, device=None):
        super().__init__()
        self.y_proj = GeluMlp(caption_channels, hidden_size, hidden_size, dtype=dtype, device=device)
        if null_tokens:
            self.register_buffer("y_embedding", torch.zeros(null_tokens, caption_channels, dtype=dtype, device=device))
        else:
            self.y_embedding = None

    def forward(self, caption: Tensor) -> Tensor:
        """[B, L, caption_channels] -> [B, L, hidden]."""
        return self.y_proj(caption)
