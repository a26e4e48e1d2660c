"""T5 encoder stack in plain PyTorch (Raffel et al. 2020, arXiv:1910.10683; T5 v1.1 GEGLU, arXiv:2002.05202).

Module names mirror the Hugging Face checkpoint keys (`shared`, `encoder.block.N.layer.0.SelfAttention.q`,
`encoder.block.N.layer.1.DenseReluDense.wi_0`, ...) so weights load by name. Output = T5EncoderModel's
`last_hidden_state` (final RMS norm applied).

Numerics: compute runs in the dtype of `shared.weight` (the `dtype` given to the model). Under float16
the residual stream, the gated feed-forward product and the output projection `wo` run in float32
(the weights are upcast per call, not stored in float32), which removes the known T5 float16 overflow
in the feed-forward output (transformers keeps `wo` in float32 for the same reason). float32 and
bfloat16 run entirely in their own dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cast_linear import CastLinear, is_float8
from .config import T5Config

_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """Bidirectional T5 relative-position buckets for keys j and queries i (Raffel et al. 2020, §2.1).

    Half of the buckets encode the sign of j - i; within a half, distances below num_buckets/4 get their
    own bucket and larger ones share log-spaced buckets up to `max_distance` (the last bucket beyond).
    """
    position = torch.arange(length, dtype=torch.long, device=device)    # [L]
    relative = position[None, :] - position[:, None]                    # [Lq, Lk]
    half = num_buckets // 2
    bucket = (relative > 0).long() * half                               # [Lq, Lk]
    distance = relative.abs()                                           # [Lq, Lk]
    exact = half // 2
    log_ratio = torch.log(distance.float() / exact) / math.log(max_distance / exact)  # [Lq, Lk]
    far = exact + (log_ratio * (half - exact)).long()                   # [Lq, Lk]
    far = far.clamp(max=half - 1)                                       # [Lq, Lk]
    return bucket + torch.where(distance < exact, distance, far)        # [Lq, Lk]


class T5RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x²) + eps): no mean subtraction, no bias; statistics in float32."""

    def __init__(self, dim: int, eps: float, *, dtype=None, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)              # [B, L, 1]
        normed = x.float() * torch.rsqrt(variance + self.eps)           # [B, L, D]
        return self.weight * normed.to(self.weight.dtype)               # [B, L, D]


class T5Attention(nn.Module):
    """Multi-head self-attention without the 1/sqrt(d) scale; the relative-position bias is added to the logits."""

    def __init__(self, config: T5Config, has_relative_bias: bool, *, storage_dtype=None, dtype=None, device=None):
        super().__init__()
        scaled = storage_dtype is not None and is_float8(storage_dtype)
        d, inner = config.d_model, config.inner_dim
        self.num_heads = config.num_heads
        self.d_kv = config.d_kv
        self.q = CastLinear(d, inner, scaled=scaled, dtype=storage_dtype, device=device)
        self.k = CastLinear(d, inner, scaled=scaled, dtype=storage_dtype, device=device)
        self.v = CastLinear(d, inner, scaled=scaled, dtype=storage_dtype, device=device)
        self.o = CastLinear(inner, d, scaled=scaled, dtype=storage_dtype, device=device)
        if has_relative_bias:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads,
                                                        dtype=dtype, device=device)
            self.relative_attention_bias.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        q = self.q(x).view(b, length, self.num_heads, self.d_kv).transpose(1, 2)  # [B, H, L, dk]
        k = self.k(x).view(b, length, self.num_heads, self.d_kv).transpose(1, 2)  # [B, H, L, dk]
        v = self.v(x).view(b, length, self.num_heads, self.d_kv).transpose(1, 2)  # [B, H, L, dk]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)   # [B, H, L, dk]
        out = out.transpose(1, 2).reshape(b, length, self.num_heads * self.d_kv)   # [B, L, H*dk]
        return self.o(out)                                                         # [B, L, D]


class T5AttentionSublayer(nn.Module):
    """x + SelfAttention(RMSNorm(x)) (pre-norm residual)."""

    def __init__(self, config: T5Config, has_relative_bias: bool, *, storage_dtype=None, dtype=None, device=None):
        super().__init__()
        self.layer_norm = T5RMSNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype, device=device)
        self.SelfAttention = T5Attention(config, has_relative_bias, storage_dtype=storage_dtype, dtype=dtype,
                                         device=device)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)                    # [B, L, D]


class T5FeedForward(nn.Module):
    """v1.1: wo(act(wi_0 h) * wi_1 h); v1.0: wo(relu(wi h)). `out_dtype` is the dtype wo runs in."""

    def __init__(self, config: T5Config, *, storage_dtype=None, device=None):
        super().__init__()
        scaled = storage_dtype is not None and is_float8(storage_dtype)
        d, ff = config.d_model, config.d_ff
        self.gated = config.is_gated_act
        self.act = _ACTIVATIONS[config.dense_act_fn]
        if self.gated:
            self.wi_0 = CastLinear(d, ff, scaled=scaled, dtype=storage_dtype, device=device)
            self.wi_1 = CastLinear(d, ff, scaled=scaled, dtype=storage_dtype, device=device)
        else:
            self.wi = CastLinear(d, ff, scaled=scaled, dtype=storage_dtype, device=device)
        self.wo = CastLinear(ff, d, scaled=scaled, dtype=storage_dtype, device=device)

    def forward(self, h: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        if self.gated:
            hidden = self.act(self.wi_0(h)).to(out_dtype) * self.wi_1(h).to(out_dtype)  # [B, L, F]
        else:
            hidden = self.act(self.wi(h)).to(out_dtype)                                # [B, L, F]
        return self.wo(hidden)                                                         # [B, L, D]


class T5FeedForwardSublayer(nn.Module):
    """x + FeedForward(RMSNorm(x)) (pre-norm residual)."""

    def __init__(self, config: T5Config, *, storage_dtype=None, dtype=None, device=None):
        super().__init__()
        self.layer_norm = T5RMSNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype, device=device)
        self.DenseReluDense = T5FeedForward(config, storage_dtype=storage_dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x), out_dtype=x.dtype)     # [B, L, D]


class T5Block(nn.Module):
    """One encoder block: `layer[0]` self-attention, `layer[1]` feed-forward."""

    def __init__(self, config: T5Config, has_relative_bias: bool, *, storage_dtype=None, dtype=None, device=None):
        super().__init__()
        self.layer = nn.ModuleList([
            T5AttentionSublayer(config, has_relative_bias, storage_dtype=storage_dtype, dtype=dtype, device=device),
            T5FeedForwardSublayer(config, storage_dtype=storage_dtype, dtype=dtype, device=device),
        ])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.layer[0](x, bias)                                                 # [B, L, D]
        return self.layer[1](x)                                                    # [B, L, D]


class T5Stack(nn.Module):
    """The encoder blocks and the final RMS norm; block 0 owns the relative-position bias table shared by all."""

    def __init__(self, config: T5Config, *, storage_dtype=None, dtype=None, device=None):
        super().__init__()
        self.block = nn.ModuleList([
            T5Block(config, has_relative_bias=(i == 0), storage_dtype=storage_dtype, dtype=dtype, device=device)
            for i in range(config.num_layers)
        ])
        self.final_layer_norm = T5RMSNorm(config.d_model, config.layer_norm_epsilon, dtype=dtype, device=device)


class T5Encoder(nn.Module):
    """T5 encoder: token ids [B, L] (+ mask) -> final hidden states [B, L, d_model].

    Parameters:
        config: the stack's hyper-parameters.
        dtype: compute dtype (embedding, norms and bias table are stored in it).
        storage_dtype: dtype of the Linear weights (None = dtype); a float8 dtype keeps them in float8
            with a per-tensor scale and upcasts each one per call.
    """

    def __init__(self, config: T5Config, *, dtype: torch.dtype | None = None, device=None,
                 storage_dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        storage_dtype = storage_dtype or dtype
        self.shared = nn.Embedding(config.vocab_size, config.d_model, dtype=dtype, device=device)
        self.shared.weight.requires_grad_(False)
        self.encoder = T5Stack(config, storage_dtype=storage_dtype, dtype=dtype, device=device)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype."""
        return self.shared.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.shared.weight.device

    @property
    def storage_dtype(self) -> torch.dtype:
        return self.encoder.block[0].layer[0].SelfAttention.q.weight.dtype

    def position_bias(self, length: int, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Relative-position bias plus key padding mask: [1|B, H, L, L] in the compute dtype."""
        table = self.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
        buckets = relative_position_buckets(length, self.config.relative_attention_num_buckets,
                                            self.config.relative_attention_max_distance, device=table.weight.device)
        bias = table(buckets).permute(2, 0, 1).unsqueeze(0)                       # [1, H, L, L]
        if attention_mask is None:
            return bias
        keep = attention_mask.to(device=bias.device, dtype=torch.bool)             # [B, L]
        keep = keep | ~keep.any(dim=-1, keepdim=True)  # a row with no valid token attends everywhere (no NaN)
        return bias.masked_fill(~keep[:, None, None, :], torch.finfo(bias.dtype).min)  # [B, H, L, L]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, L] long, attention_mask [B, L] (1 = token, 0 = padding) or None -> [B, L, d_model]."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                             f"{tuple(input_ids.shape)}")
        input_ids = input_ids.to(self.device)
        compute = self.dtype
        residual = torch.float32 if compute == torch.float16 else compute
        x = self.shared(input_ids).to(residual)                                    # [B, L, D]
        bias = self.position_bias(input_ids.shape[1], attention_mask)              # [1|B, H, L, L]
        for block in self.encoder.block:
            x = block(x, bias)                                                     # [B, L, D]
        return self.encoder.final_layer_norm(x)                                    # [B, L, D]
