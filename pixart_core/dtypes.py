"""Weight and compute dtypes by name, and the one rule for the default dtype on a device.

The default follows the hardware: on CUDA bf16 where the GPU supports it, else fp16; on Apple GPUs (MPS) fp16;
on CPUs bf16 only with native bf16 arithmetic (AVX512-BF16 or AMX), where the DiT runs about twice as fast as
in fp32, else fp32 (without native bf16, PyTorch's bf16 GEMMs run several times slower than fp32 ones).
"""

from __future__ import annotations

import functools

import torch

#: The dtype names the CLI flags and the loader nodes offer.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX tiles)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype to load and run a model in on `device` when the user did not choose one (module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype of a name in DTYPES; ValueError naming the choices otherwise."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]
