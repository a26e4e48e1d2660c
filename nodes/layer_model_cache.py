"""LayerDiffuse's transparent decoder and encoder for the transparency nodes, read once per file.

A workflow that decodes on every run would otherwise read the file again each time (the released decoder is
about 200 MB) and hand ComfyUI's model management a new module to move to the GPU. The last file of each role
stays in memory with its model-management handle, so ComfyUI finds the same model again; a file changed on disk
(size or modification time) or another dtype is read again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..pixart_core.rgba import load_transparent_decoder, load_transparent_encoder
from . import host

_HELD: dict[str, tuple[tuple, host.ManagedModule]] = {}  # role -> (file key, handle)


def _file_key(path: Path, dtype: torch.dtype) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(dtype)


def _held(role: str, path: Path, dtype: torch.dtype, load) -> host.ManagedModule:
    key = _file_key(path, dtype)
    held = _HELD.get(role)
    if held is None or held[0] != key:
        _HELD.pop(role, None)  # let the previous file go before reading the next
        _HELD[role] = (key, host.managed(load(path, dtype), kind="vae"))
    return _HELD[role][1]


def transparent_decoder(path: Path, dtype: torch.dtype) -> host.ManagedModule:
    """The ComfyUI handle of LayerDiffuse's transparent decoder at `path` (weights on the CPU, in `dtype`)."""
    return _held("decoder", path, dtype, lambda p, d: load_transparent_decoder(p, device="cpu", dtype=d))


def transparent_encoder(path: Path, dtype: torch.dtype = torch.float32) -> host.ManagedModule:
    """The ComfyUI handle of LayerDiffuse's transparent encoder at `path`."""
    return _held("encoder", path, dtype, lambda p, d: load_transparent_encoder(p, dtype=d))
