"""Linear layers of the DiT: the compute-dtype policy and reusable output buffers.

Compute dtype: on CPUs without native bfloat16 arithmetic (no AVX512-BF16 / AMX), PyTorch's bf16 GEMM and
attention kernels run several times slower than fp32 ones (~9x for the DiT linears on an AVX2 EPYC). There the
products run in float32 from bf16 weights and activations and round once back to bf16: the same or better
accuracy than a bf16 GEMM (which accumulates in fp32 anyway). GPUs and bf16-capable CPUs stay native.
PixArt's own training configs also run attention in fp32 (`fp32_attention = True` in the PixArt-alpha
repository's `configs/pixart_config/PixArt_xl2_img1024_internal.py`).

Scratch buffers: inside the model's inference forward (autograd off) each large intermediate (GEMM outputs,
upcast inputs and weights) is written into a buffer reused from block to block, instead of a fresh allocation
whose first-touch page faults cost as much as the arithmetic for element-wise steps on CPU.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..dtypes import cpu_has_native_bf16


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """dtype to run products of `tensor` in: float32 for bf16 on CPUs without native bf16, else its own."""
    if tensor.dtype == torch.bfloat16 and tensor.device.type == "cpu" and not cpu_has_native_bf16():
        return torch.float32
    return tensor.dtype


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear` in the compute dtype (see `compute_dtype`), result left in that dtype."""
    compute = torch.promote_types(compute_dtype(x), compute_dtype(weight))
    bias = None if bias is None else bias.to(compute)
    return F.linear(x.to(compute), weight.to(compute), bias)  # [..., out_features]


class ScratchPool:
    """Named buffers reused across the blocks of one inference forward; empty outside `ScratchPool.lend`.

    A buffer handed out under a name stays valid until the same name is requested again."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}
        self._borrower: int | None = None  # thread inside `lend`

    @contextlib.contextmanager
    def lend(self) -> Iterator[None]:
        """Hand out buffers to this thread within the block while autograd is off; free them all on exit."""
        if torch.is_grad_enabled() or self._borrower is not None:
            yield
            return
        self._borrower = threading.get_ident()
        try:
            yield
        finally:
            self._borrower = None
            self._buffers.clear()

    def lending(self) -> bool:
        """Whether the calling thread may use buffers now."""
        return self._borrower == threading.get_ident() and not torch.is_grad_enabled()

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Uninitialised tensor of `shape` backed by the buffer `name` (grown when too small)."""
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            buffer = torch.empty(numel, dtype=dtype, device=device)  # [numel]
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)

    def cast(self, name: str, tensor: Tensor, dtype: torch.dtype) -> Tensor:
        """`tensor.to(dtype)` written into the buffer `name` (no copy when the dtype already matches)."""
        if tensor.dtype == dtype:
            return tensor
        return self.get(name, tuple(tensor.shape), dtype, tensor.device).copy_(tensor)


class ComputeLinear(nn.Linear):
    """`nn.Linear` (same `weight` / `bias` keys) whose product runs in the compute dtype, result left in it.

    With a `scratch` pool that is lending (the owning model's inference forward), the result is written into
    the pool's buffer named `role` (bias fused into the GEMM via addmm): it stays valid until the next layer
    of the same role runs, so callers consume it before then."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, role: str | None = None,
                 dtype=None, device=None):
        super().__init__(in_features, out_features, bias, dtype=dtype, device=device)
        self.role = role
        self.scratch: ScratchPool | None = None

    def forward(self, x: Tensor) -> Tensor:
        """[..., in] -> [..., out] in the compute dtype."""
        scratch = self.scratch
        if self.role is None or scratch is None or not scratch.lending():
            return linear(x, self.weight, self.bias)  # [..., out]
        compute = torch.promote_types(compute_dtype(x), compute_dtype(self.weight))
        rows = scratch.cast("linear_input", x.reshape(-1, x.shape[-1]), compute)  # [M, in]
        weight = scratch.cast("linear_weight", self.weight, compute)  # [out, in]
        result = scratch.get(self.role, (rows.shape[0], self.out_features), compute, x.device)  # [M, out]
        if self.bias is None:
            torch.mm(rows, weight.t(), out=result)  # [M, out]
        else:
            torch.addmm(self.bias.to(compute), rows, weight.t(), out=result)  # [M, out]
        return result.view(*x.shape[:-1], self.out_features)  # [..., out]

    def extra_repr(self) -> str:
        role = "" if self.role is None else f", role={self.role}"
        return super().extra_repr() + role
