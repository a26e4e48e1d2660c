"""Atomic writers for the fixtures: safetensors, torch and JSON files appear whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch


def _write_atomically(path: Path | str, write: Callable[[Path], None]) -> None:
    """Call `write(temp)` on a temp file beside `path`, then rename it into place; the temp never outlives it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically."""
    from safetensors.torch import save_file

    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    _write_atomically(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def save_torch(obj, path: Path | str) -> None:
    """torch.save atomically."""
    _write_atomically(path, lambda tmp: torch.save(obj, tmp))


def write_json(data: dict, path: Path | str) -> None:
    """Write indented JSON atomically."""
    _write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))
