"""A bias-free Linear whose weight stays in its storage dtype (e.g. float8) and is cast per call.

The weight is upcast to the input's dtype (the compute dtype) inside `forward`, one layer at a time, so
an fp8-stored T5-XXL holds ~4.7 GB of weights instead of 9.5 GB (fp16). A float8 weight may carry a
per-tensor float32 `scale_weight` (ComfyUI's "scaled fp8" layout): W = W_fp8 * scale_weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FLOAT8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))


def is_float8(dtype: torch.dtype) -> bool:
    return dtype in FLOAT8_DTYPES


def quantize_float8(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled float8: returns (W / s in `dtype`, s) with s = max|W| / max(dtype), s = 1 for W = 0.

    Scaling uses the whole float8 range, so small T5 weights do not fall into float8 subnormals, and no
    value saturates (a plain cast of |w| > 448 to e4m3fn gives NaN).
    """
    weight = weight.float()                                             # [out, in]
    amax = weight.abs().amax()                                          # []
    scale = torch.where(amax > 0, amax / torch.finfo(dtype).max, torch.ones_like(amax))  # []
    return (weight / scale).to(dtype), scale                            # [out, in], []


class CastLinear(nn.Module):
    """y = x Wᵀ (no bias), with W cast from its storage dtype to x's dtype on the fly.

    Parameters:
        in_features / out_features: matrix shape (W is [out_features, in_features], as nn.Linear).
        scaled: hold a float32 per-tensor `scale_weight` buffer (float8 storage).
    """

    def __init__(self, in_features: int, out_features: int, *, scaled: bool = False,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device),
                                   requires_grad=False)
        if scaled:
            self.register_buffer("scale_weight", torch.ones((), dtype=torch.float32, device=device))
        else:
            self.register_buffer("scale_weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)  # [out, in]
        if self.scale_weight is not None:  # scale W, not y: x @ W_fp8 alone can overflow float16
            scale = self.scale_weight.to(x.dtype)                                        # []
            weight = weight.mul_(scale) if weight is not self.weight else weight * scale  # [out, in]
        return F.linear(x, weight)                                                       # [..., out]

    def extra_repr(self) -> str:
        scaled = ", scaled" if self.scale_weight is not None else ""
        return f"{self.in_features}, {self.out_features}, storage={self.weight.dtype}{scaled}"
