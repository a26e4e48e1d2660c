"""The --device check: refuse a device this machine lacks before anything loads, listing those it has."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    """Devices this machine has: cpu, cuda:N for each GPU, mps when present."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(name: str) -> str:
    """`name` if this machine has that device; otherwise ValueError listing the ones it has."""
    available = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    ok = device is not None and (
        device.type == "cpu"
        or (device.type == "cuda" and f"cuda:{device.index or 0}" in available)
        or (device.type == "mps" and "mps" in available))
    if not ok:
        raise ValueError(f"--device {name}: not available on this machine; pass one of {', '.join(available)}")
    return name
