"""PixArt self-attention (with optional Σ qk-norm and KV token compression) and text cross-attention.

Heads are contiguous `head_dim`-wide slices; fused weights stack rows [q; k; v] (`qkv`) and [k; v]
(`kv_linear`) as in the official checkpoints (`Attention`, `AttentionKVCompress` and `MultiHeadCrossAttention`
in the PixArt-sigma repository's `diffusion/model/nets/PixArt_blocks.py`). Products run through one GEMM per
fused weight and torch SDPA on [B, heads, tokens, head_dim] views (the layout the CPU flash kernel reads
without copies; its output transposes back to [B, tokens, C] for free).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear import ComputeLinear

KV_NORM_EPS = 1e-5  # nn.LayerNorm default, used by the Σ qk-norm and KV-compress norms (`AttentionKVCompress`)


def _merge_heads(out: Tensor) -> Tensor:
    """[B, heads, N, d] -> [B, N, heads*d]."""
    batch, heads, tokens, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)  # [B, N, C]


def _layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    weight = None if norm.weight is None else norm.weight.to(x.dtype)
    bias = None if norm.bias is None else norm.bias.to(x.dtype)
    return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)  # same shape as x


class SelfAttention(nn.Module):
    """Multi-head self-attention over image tokens (keys `qkv`, `proj`, optional `q_norm`, `k_norm`, `sr`, `norm`).

    qk-norm: affine LayerNorm over the full width on q and k before the head split (Σ `qk_norm`).
    KV compression (Σ `AttentionKVCompress`): K and V are downsampled on the 2-D token grid by `ratio`
    ("conv": depthwise Conv2d k = s = ratio then LayerNorm; "ave": nearest interpolation; "uniform": strided
    slice); Q keeps every token."""

    def __init__(self, dim: int, num_heads: int, *, qk_norm: bool = False, kv_compress_ratio: int = 1,
                 kv_compress_sampling: str = "conv", dtype=None, device=None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kv_compress_ratio = kv_compress_ratio
        self.kv_compress_sampling = kv_compress_sampling
        self.qkv = ComputeLinear(dim, 3 * dim, role="qkv", dtype=dtype, device=device)
        self.proj = ComputeLinear(dim, dim, role="proj", dtype=dtype, device=device)
        self.q_norm = nn.LayerNorm(dim, eps=KV_NORM_EPS, dtype=dtype, device=device) if qk_norm else None
        self.k_norm = nn.LayerNorm(dim, eps=KV_NORM_EPS, dtype=dtype, device=device) if qk_norm else None
        if kv_compress_ratio > 1 and kv_compress_sampling == "conv":
            self.sr = nn.Conv2d(dim, dim, kv_compress_ratio, stride=kv_compress_ratio, groups=dim,
                                dtype=dtype, device=device)
            self.norm = nn.LayerNorm(dim, eps=KV_NORM_EPS, dtype=dtype, device=device)
            if self.sr.weight.device.type != "meta":
                with torch.no_grad():  # the official "Avg Conv Init"
                    self.sr.weight.fill_(1.0 / kv_compress_ratio**2)
                    self.sr.bias.zero_()

    def downsample(self, tokens: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        """[B, h*w, C] -> [B, M, C] with M the compressed grid size."""
        batch, _, channels = tokens.shape
        height, width = grid_hw
        ratio = self.kv_compress_ratio
        grid = tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2)  # [B, C, h, w]
        if self.kv_compress_sampling == "conv":
            weight, bias = self.sr.weight.to(grid.dtype), self.sr.bias.to(grid.dtype)
            grid = F.conv2d(grid, weight, bias, stride=ratio, groups=channels)  # [B, C, h/r, w/r]
            return _layer_norm(grid.flatten(2).transpose(1, 2), self.norm)  # [B, M, C]
        if self.kv_compress_sampling == "ave":
            grid = F.interpolate(grid, scale_factor=1.0 / ratio, mode="nearest")  # [B, C, h/r, w/r]
        else:  # "uniform"
            grid = grid[:, :, ::ratio, ::ratio]  # [B, C, ceil(h/r), ceil(w/r)]
        return grid.flatten(2).transpose(1, 2)  # [B, M, C]

    def forward(self, x: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        """[B, N, C] (N = h*w, row-major) -> [B, N, C] in the compute dtype (see `linear.compute_dtype`)."""
        batch, tokens, channels = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        qkv = self.qkv(x)  # [B, N, 3C]
        if self.q_norm is None and self.kv_compress_ratio == 1:
            q, k, v = qkv.view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, d]
        else:
            q, k, v = qkv.view(batch, tokens, 3, channels).unbind(2)  # [B, N, C]
            if self.q_norm is not None:
                q, k = _layer_norm(q, self.q_norm), _layer_norm(k, self.k_norm)  # [B, N, C]
            if self.kv_compress_ratio > 1:
                k, v = self.downsample(k, grid_hw), self.downsample(v, grid_hw)  # [B, M, C]
            q = q.reshape(batch, tokens, heads, head_dim).transpose(1, 2)  # [B, H, N, d]
            k = k.reshape(batch, -1, heads, head_dim).transpose(1, 2)  # [B, H, M, d]
            v = v.reshape(batch, -1, heads, head_dim).transpose(1, 2)  # [B, H, M, d]
        out = _merge_heads(F.scaled_dot_product_attention(q, k, v))  # [B, N, C]
        return self.proj(out)  # [B, N, C]


class CrossAttention(nn.Module):
    """Image tokens attend to caption tokens (keys `q_linear`, `kv_linear`, `proj`); the query is the
    un-normalised residual stream (no norm, no gate: `PixArtMSBlock.forward` in the PixArt-alpha repository's
    `diffusion/model/nets/PixArtMS.py`)."""

    def __init__(self, dim: int, num_heads: int, *, dtype=None, device=None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = ComputeLinear(dim, dim, role="cross_q", dtype=dtype, device=device)
        self.kv_linear = ComputeLinear(dim, 2 * dim, role="cross_kv", dtype=dtype, device=device)
        self.proj = ComputeLinear(dim, dim, role="proj", dtype=dtype, device=device)
        self.recorder = None  # an `AttentionRecorder` only inside `PixArtTransformer.capture_attention`
        self.regional = None  # a `RegionalPrompting` only inside `PixArtTransformer.regional_prompting`

    def forward(self, x: Tensor, context: Tensor, keep: Tensor | None = None) -> Tensor:
        """x [B, N, C], context [B, L, C], keep bool [B, 1, 1, L] or None (all kept) -> [B, N, C]."""
        batch, tokens, _ = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        q = self.q_linear(x).view(batch, tokens, heads, head_dim).transpose(1, 2)  # [B, H, N, d]
        kv = self.kv_linear(context)  # [B, L, 2C]
        k, v = kv.view(batch, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, L, d]
        if q.dtype != k.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)  # [B, H, L, d]
        if self.regional is not None:  # masks, blends and records per `regions.RegionalPrompting`
            return self.proj(_merge_heads(self.regional.attend(self, q, k, v, keep)))  # [B, N, C]
        if self.recorder is not None:
            self.recorder.record(q, k, keep)  # reads q and k only
        out = _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=keep))  # [B, N, C]
        return self.proj(out)  # [B, N, C]
