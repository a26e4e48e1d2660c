"""Products and buffers for the DiT forward: compute dtype policy, reusable workspace, fused-bias GEMM.

Compute dtype: on CPUs without native bfloat16 arithmetic (no AVX512-BF16 / AMX), PyTorch's bf16 GEMM and
attention kernels run several times slower than fp32 ones (~9x for the DiT linears on an AVX2 EPYC). There the
products run in float32 from bf16 weights and activations and round once back to bf16: the same or better
accuracy than a bf16 GEMM (which accumulates in fp32 anyway). GPUs and bf16-capable CPUs stay native.
PixArt's own training config also runs attention in fp32 (`fp32_attention=True`, pixart.md §1.10).

Workspace: in inference (autograd off) each block's large intermediates (GEMM outputs, norms, MLP hidden,
upcast weights) are written into buffers reused from block to block, instead of fresh allocations whose
first-touch page faults cost as much as the arithmetic for element-wise steps on CPU.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=None)
def _cpu_has_native_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """dtype to run products of `tensor` in: float32 for bf16 on CPUs without native bf16, else its own."""
    if tensor.dtype == torch.bfloat16 and tensor.device.type == "cpu" and not _cpu_has_native_bf16():
        return torch.float32
    return tensor.dtype


class Workspace:
    """Named scratch buffers reused across blocks of one forward (inference only: never under autograd).

    A buffer handed out under a name stays valid until the same name is requested again."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

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

    def clear(self) -> None:
        self._buffers.clear()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, workspace: Workspace | None = None,
           out: str | None = None) -> Tensor:
    """`F.linear` in the compute dtype (see `compute_dtype`), result left in that dtype.

    With a workspace, low-precision operands are upcast into scratch buffers and the result is written into
    the buffer named `out` (bias fused into the GEMM via addmm)."""
    compute = torch.promote_types(compute_dtype(x), compute_dtype(weight))
    if workspace is None or out is None:
        bias = None if bias is None else bias.to(compute)
        return F.linear(x.to(compute), weight.to(compute), bias)  # [..., out_features]
    features = weight.shape[0]
    rows = x.reshape(-1, x.shape[-1])  # [M, in]
    rows = workspace.cast("linear_input", rows, compute)  # [M, in]
    weight = workspace.cast("linear_weight", weight, compute)  # [out, in]
    result = workspace.get(out, (rows.shape[0], features), compute, x.device)  # [M, out]
    if bias is None:
        torch.mm(rows, weight.t(), out=result)  # [M, out]
    else:
        torch.addmm(bias.to(compute), rows, weight.t(), out=result)  # [M, out]
    return result.view(*x.shape[:-1], features)  # [..., out]
