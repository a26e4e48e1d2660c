"""Validate a parsed safetensors header the way the safetensors library does before reading any tensor.

Format (https://github.com/huggingface/safetensors, README "Format"): an 8-byte little-endian header length,
a JSON object mapping tensor names to {"dtype": str, "shape": [int, ...], "data_offsets": [begin, end]} plus
an optional "__metadata__" object of strings, then the data section. The byte ranges, sorted, must tile the
data section exactly (no gaps, no overlaps, nothing after the last tensor), and each range must hold exactly
shape x dtype-size bytes.
"""

from __future__ import annotations

import math

import torch

from .errors import CheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

# (dtype, shape, absolute file offset, byte count) per tensor name
Entries = dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_header(path, header, data_start: int, file_size: int) -> tuple[dict, Entries]:
    """(metadata, entries) of a parsed header; CheckpointError naming `path` and the tensor for any defect."""

    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: corrupt safetensors header: {what}; re-download or re-export the file.")

    if not isinstance(header, dict):
        raise fail(f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise fail("__metadata__ must map names to strings")
    entries: Entries = {}
    ranges = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise fail(f"tensor {key!r} is a JSON {type(entry).__name__}, not an object")
        name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(name, str):
            raise fail(f"tensor {key!r} has dtype {name!r}, not a string")
        if name not in DTYPES:
            raise fail(f"tensor {key!r} has unknown dtype {name!r} (known: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise fail(f"tensor {key!r} has shape {shape!r}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
            raise fail(f"tensor {key!r} has data_offsets {offsets!r}, not two non-negative integers")
        begin, end = offsets
        if end < begin:
            raise fail(f"tensor {key!r} has data_offsets {offsets} ending before they start")
        dtype = DTYPES[name]
        needed = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != needed:
            raise fail(f"tensor {key!r} ({name} {shape}) needs {needed} bytes but data_offsets {offsets} "
                       f"hold {end - begin}")
        entries[key] = (dtype, tuple(shape), data_start + begin, end - begin)
        ranges.append((begin, end, key))
    expected = 0
    for begin, end, key in sorted(ranges):
        if begin != expected:
            kind = "overlaps the previous tensor" if begin < expected else f"leaves a gap at byte {expected}"
            raise fail(f"tensor {key!r} at data_offsets [{begin}, {end}] {kind}")
        expected = end
    if data_start + expected > file_size:
        raise CheckpointError(f"{path}: file is truncated ({file_size} bytes, its header needs "
                              f"{data_start + expected}); re-download it.")
    if data_start + expected < file_size:
        raise fail(f"{file_size - data_start - expected} bytes after the last tensor")
    return metadata, entries
