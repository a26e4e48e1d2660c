"""PixArt transformer block (adaLN-single) and final layer (PixArt-α arXiv:2310.00426).

Block: x += gate_msa * attn(norm1(x) * (1 + scale_msa) + shift_msa); x += cross_attn(x, y);
       x += gate_mlp * mlp(norm2(x) * (1 + scale_mlp) + shift_mlp), with
       [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] = scale_shift_table + t0.
Norms are non-affine LayerNorms with eps 1e-6 (`PixArtMSBlock` and `T2IFinalLayer` in the PixArt-alpha
repository's `diffusion/model/nets/PixArtMS.py` and `PixArt_blocks.py`). Residual updates and modulations are
done in place when autograd is off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import CrossAttention, SelfAttention
from .linear import ComputeLinear, compute_dtype

NORM_EPS = 1e-6


def modulated_norm(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """LayerNorm(x) * (1 + scale) + shift in the compute dtype; x [B, N, C], shift/scale [B, 1, C].

    With autograd off the modulation is applied in place on the fresh LayerNorm output."""
    compute = compute_dtype(x)
    shift, scale = shift.to(compute), (1 + scale).to(compute)  # [B, 1, C]
    h = F.layer_norm(x.to(compute), x.shape[-1:], eps=NORM_EPS)  # [B, N, C]
    return torch.addcmul(shift, h, scale, out=None if torch.is_grad_enabled() else h)  # [B, N, C]


def add_residual(x: Tensor, update: Tensor, gate: Tensor | None = None) -> Tensor:
    """x + gate * update, written into x when autograd is off (x keeps its dtype)."""
    if torch.is_grad_enabled() and (x.requires_grad or update.requires_grad):
        out = x + update if gate is None else torch.addcmul(x, gate, update)  # [B, N, C]
        return out.to(x.dtype)
    if gate is None:
        return x.add_(update)  # [B, N, C]
    return x.addcmul_(gate.to(update.dtype), update)  # [B, N, C]


class GeluMlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear (keys `fc1`, `fc2`); `roles` name their scratch buffers (None: none)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, *,
                 roles: tuple[str | None, str | None] = (None, None), dtype=None, device=None):
        super().__init__()
        self.fc1 = ComputeLinear(in_features, hidden_features, role=roles[0], dtype=dtype, device=device)
        self.fc2 = ComputeLinear(hidden_features, out_features, role=roles[1], dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        """[..., in] -> [..., out] in the compute dtype."""
        hidden = self.fc1(x)  # [..., hidden]
        if torch.is_grad_enabled() and hidden.requires_grad:
            hidden = F.gelu(hidden, approximate="tanh")  # [..., hidden]
        else:
            hidden = torch.ops.aten.gelu_(hidden, approximate="tanh")  # [..., hidden]
        return self.fc2(hidden)  # [..., out]


class PixArtBlock(nn.Module):
    """One DiT block with adaLN-single modulation (keys `scale_shift_table`, `attn`, `cross_attn`, `mlp`)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, *, qk_norm: bool = False,
                 kv_compress_ratio: int = 1, kv_compress_sampling: str = "conv", dtype=None, device=None):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.zeros(6, hidden_size, dtype=dtype, device=device))
        self.attn = SelfAttention(hidden_size, num_heads, qk_norm=qk_norm, kv_compress_ratio=kv_compress_ratio,
                                  kv_compress_sampling=kv_compress_sampling, dtype=dtype, device=device)
        self.cross_attn = CrossAttention(hidden_size, num_heads, dtype=dtype, device=device)
        self.mlp = GeluMlp(hidden_size, int(hidden_size * mlp_ratio), hidden_size, roles=("mlp_hidden", "proj"),
                           dtype=dtype, device=device)

    def forward(self, x: Tensor, t0: Tensor, context: Tensor, keep: Tensor | None, grid_hw: tuple[int, int]) -> Tensor:
        """x [B, N, C], t0 [B, 6, C], context [B, L, C], keep bool [B, 1, 1, L] or None -> [B, N, C].

        With autograd off x is updated in place."""
        modulation = (self.scale_shift_table[None] + t0)[:, :, None]  # [B, 6, 1, C]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.unbind(1)  # [B, 1, C] each
        x = add_residual(x, self.attn(modulated_norm(x, shift_msa, scale_msa), grid_hw), gate_msa)  # [B, N, C]
        x = add_residual(x, self.cross_attn(x, context, keep))  # [B, N, C]
        x = add_residual(x, self.mlp(modulated_norm(x, shift_mlp, scale_mlp)), gate_mlp)  # [B, N, C]
        return x


class FinalLayer(nn.Module):
    """T2IFinalLayer: LayerNorm -> modulate with scale_shift_table + t (not t0) -> Linear(C, p*p*out)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, *, dtype=None, device=None):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.zeros(2, hidden_size, dtype=dtype, device=device))
        self.linear = ComputeLinear(hidden_size, patch_size * patch_size * out_channels, role="final",
                                    dtype=dtype, device=device)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x [B, N, C], t [B, C] -> [B, N, p*p*out] in the compute dtype."""
        shift, scale = (self.scale_shift_table[None] + t[:, None])[:, :, None].unbind(1)  # [B, 1, C] each
        return self.linear(modulated_norm(x, shift, scale))  # [B, N, p*p*out]
