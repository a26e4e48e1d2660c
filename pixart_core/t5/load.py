"""Load a T5 encoder from any layout users have (see `layout.py`), streaming one tensor at a time.

The module is built on the meta device and filled with tensors read and converted one by one, so a
load holds one copy of the weights in their final dtype. Linear weights go to `storage_dtype`; a float8
storage keeps float8 source weights as they are (with their ComfyUI `scale_weight`, or 1) and quantises
other sources per tensor (`quantize_float8`). Everything else (embedding, norms, bias table) is kept in
the compute dtype.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..checkpoint_io import StateDictReader
from ..errors import CheckpointError
from .cast_linear import FLOAT8_DTYPES, CastLinear, is_float8, quantize_float8
from .layout import T5KeyLayout, check_unexpected, choose_config, find_layout, resolve_source
from .model import T5Encoder

log = logging.getLogger(__name__)

COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
STORAGE_DTYPES = COMPUTE_DTYPES + FLOAT8_DTYPES


def _check_dtypes(dtype: torch.dtype, storage_dtype: torch.dtype) -> None:
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"T5 compute dtype must be one of {COMPUTE_DTYPES}, not {dtype}")
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"T5 storage dtype must be one of {STORAGE_DTYPES}, not {storage_dtype}")


def _read_scale(reader: StateDictReader, key: str | None, device, name: str) -> torch.Tensor | None:
    if key is None:
        return None
    scale = reader.get(key, dtype=torch.float32, device=device)
    if scale.numel() != 1:
        raise CheckpointError(f"{name}: {key} has {scale.numel()} values; only per-tensor float8 scales are supported.")
    return scale.reshape(())                                                       # []


def _read_linear(reader: StateDictReader, source: str, scale_key: str | None, storage: torch.dtype,
                 device, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One Linear weight in `storage` dtype (+ its float32 scale when `storage` is float8)."""
    scale = _read_scale(reader, scale_key, device, name)
    source_dtype = reader.info(source).dtype
    if is_float8(storage):
        if source_dtype == storage:  # keep the file's float8 values untouched
            weight = reader.get(source, device=device)                              # [out, in]
            return weight, scale if scale is not None else torch.ones((), device=device)
        weight = reader.get(source, dtype=torch.float32, device=device)             # [out, in]
        if scale is not None:
            weight.mul_(scale)
        return quantize_float8(weight, storage)                                    # [out, in], []
    if scale is None:
        return reader.get(source, dtype=storage, device=device), None               # [out, in]
    weight = reader.get(source, dtype=torch.float32, device=device)                 # [out, in]
    return weight.mul_(scale).to(storage), None                                    # [out, in]


def _check_keys(reader: StateDictReader, layout: T5KeyLayout, expected: dict[str, torch.Tensor], name: str) -> None:
    missing, wrong = [], []
    for ours, meta in expected.items():
        if ours.endswith(".scale_weight"):
            continue
        source = layout.source_key(ours)
        if source not in reader:
            missing.append(source)
        elif tuple(reader.info(source).shape) != tuple(meta.shape):
            wrong.append(f"{source} {tuple(reader.info(source).shape)} (expected {tuple(meta.shape)})")
    if missing:
        raise CheckpointError(f"{name}: missing T5 keys {missing[:4]}{' ...' if len(missing) > 4 else ''} "
                              f"({len(missing)} in all); the file is incomplete or not a T5-v1.1 encoder.")
    if wrong:
        raise CheckpointError(f"{name}: T5 tensors with wrong shapes: {wrong[:3]}; config.json does not match the "
                              f"weights, or the file is not a T5-v1.1 encoder.")


def load_t5_encoder(path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    storage_dtype: torch.dtype | None = None) -> T5Encoder:
    """Load a T5 encoder (HF folder, sharded .safetensors/.bin, diffusers root, or ComfyUI single file).

    Parameters:
        path: file or folder (see `pixart_core.t5.layout`).
        dtype: compute dtype (float32, float16 or bfloat16).
        device: where the weights are placed.
        storage_dtype: dtype of the Linear weights, None = dtype; float8_e4m3fn / float8_e5m2 keeps them in
            float8 (per-tensor scaled) and upcasts one layer at a time in forward.
    Raises CheckpointError naming the file when it is not a complete T5 encoder.
    """
    storage = storage_dtype or dtype
    _check_dtypes(dtype, storage)
    source = resolve_source(path)
    name = source.name
    with StateDictReader(source.files) as reader:
        layout = find_layout(reader, name)
        config = choose_config(reader, layout, source)
        with torch.device("meta"):
            model = T5Encoder(config, dtype=dtype, storage_dtype=storage)
        expected = model.state_dict()
        check_unexpected(reader, layout, set(expected), name)
        _check_keys(reader, layout, expected, name)
        linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, CastLinear)}
        state: dict[str, torch.Tensor] = {}
        for ours in expected:
            if ours.endswith(".scale_weight"):
                continue
            source_key = layout.source_key(ours)
            if ours in linears:
                weight, scale = _read_linear(reader, source_key, layout.scale_keys.get(ours), storage, device, name)
                state[ours] = weight
                if scale is not None:
                    state[ours[: -len("weight")] + "scale_weight"] = scale
            else:
                state[ours] = reader.get(source_key, dtype=dtype, device=device)
        model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False).eval()
    log.info("T5 encoder %s: %d layers, d_model %d, compute %s, weights %s", name, config.num_layers,
             config.d_model, dtype, storage)
    return model.to(device)
