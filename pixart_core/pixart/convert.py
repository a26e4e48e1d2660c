"""Official PixArt <-> diffusers `PixArtTransformer2DModel` state-dict key conversion (diffusers
`scripts/convert_pixart_sigma_to_diffusers.py` is the published mapping).

Official fused weights are stacked along dim 0: `attn.qkv = cat(to_q, to_k, to_v)` and
`cross_attn.kv_linear = cat(to_k, to_v)`. The official stored `pos_embed` (and diffusers' `pos_embed.pos_embed`
buffer, when present) are dropped: the model recomputes the 2-D sin-cos table every call.
KV-compress weights (`attn.sr.*`, `attn.norm.*`) have no diffusers counterpart and raise ValueError.

Streaming use (no tensor copies needed to plan a load):
    sources = diffusers_key_sources(reader.keys())       # {official_key: (diffusers_key, ...)}
    official[k] = torch.cat([reader.get(d) for d in sources[k]], dim=0)  # one source -> no cat
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from ..errors import format_keys

# Official keys dropped on conversion (the position table is recomputed per call).
OFFICIAL_DROPPED = ("pos_embed",)
DIFFUSERS_DROPPED = ("pos_embed.pos_embed",)

# Whole-module renames outside the blocks: official prefix -> diffusers prefix.
_TOP_LEVEL: tuple[tuple[str, str], ...] = (
    ("x_embedder.proj", "pos_embed.proj"),
    ("y_embedder.y_proj.fc1", "caption_projection.linear_1"),
    ("y_embedder.y_proj.fc2", "caption_projection.linear_2"),
    ("t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2"),
    ("csize_embedder.mlp.0", "adaln_single.emb.resolution_embedder.linear_1"),
    ("csize_embedder.mlp.2", "adaln_single.emb.resolution_embedder.linear_2"),
    ("ar_embedder.mlp.0", "adaln_single.emb.aspect_ratio_embedder.linear_1"),
    ("ar_embedder.mlp.2", "adaln_single.emb.aspect_ratio_embedder.linear_2"),
    ("t_block.1", "adaln_single.linear"),
    ("final_layer.linear", "proj_out"),
)
# Whole tensors (no .weight/.bias suffix) outside the blocks.
_TOP_LEVEL_TENSORS: tuple[tuple[str, str], ...] = (
    ("final_layer.scale_shift_table", "scale_shift_table"),
    ("y_embedder.y_embedding", "caption_projection.y_embedding"),
)
# Inside block N: official sub-path -> diffusers sub-paths (several = concatenated along dim 0 in official).
_BLOCK_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attn.qkv", ("attn1.to_q", "attn1.to_k", "attn1.to_v")),
    ("attn.proj", ("attn1.to_out.0",)),
    ("attn.q_norm", ("attn1.q_norm",)),
    ("attn.k_norm", ("attn1.k_norm",)),
    ("cross_attn.q_linear", ("attn2.to_q",)),
    ("cross_attn.kv_linear", ("attn2.to_k", "attn2.to_v")),
    ("cross_attn.proj", ("attn2.to_out.0",)),
    ("mlp.fc1", ("ff.net.0.proj",)),
    ("mlp.fc2", ("ff.net.2",)),
)
_PARAM_SUFFIXES = ("weight", "bias")

_OFFICIAL_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_DIFFUSERS_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_KV_COMPRESS = re.compile(r"^blocks\.\d+\.attn\.(sr|norm)\.(weight|bias)$")


def _build_official_table() -> dict[str, tuple[str, ...]]:
    """Non-block official key -> diffusers keys."""
    table: dict[str, tuple[str, ...]] = {}
    for official, diffusers in _TOP_LEVEL:
        for suffix in _PARAM_SUFFIXES:
            table[f"{official}.{suffix}"] = (f"{diffusers}.{suffix}",)
    for official, diffusers in _TOP_LEVEL_TENSORS:
        table[official] = (diffusers,)
    return table


def _build_block_table() -> dict[str, tuple[str, ...]]:
    """Official block-relative key -> diffusers block-relative keys."""
    table: dict[str, tuple[str, ...]] = {"scale_shift_table": ("scale_shift_table",)}
    for official, parts in _BLOCK_MODULES:
        for suffix in _PARAM_SUFFIXES:
            table[f"{official}.{suffix}"] = tuple(f"{part}.{suffix}" for part in parts)
    return table


_OFFICIAL_TOP = _build_official_table()
_OFFICIAL_IN_BLOCK = _build_block_table()
# Reverse: diffusers key -> (official key, index of this piece, number of pieces).
_DIFFUSERS_TOP = {d: (o, i, len(ds)) for o, ds in _OFFICIAL_TOP.items() for i, d in enumerate(ds)}
_DIFFUSERS_IN_BLOCK = {d: (o, i, len(ds)) for o, ds in _OFFICIAL_IN_BLOCK.items() for i, d in enumerate(ds)}



def official_key_targets(official_key: str) -> tuple[str, ...]:
    """Diffusers keys that `official_key` splits into (equal chunks along dim 0); () if the key is dropped.

    Raises ValueError for keys with no diffusers counterpart (KV compression) or unknown keys."""
    if official_key in OFFICIAL_DROPPED:
        return ()
    if official_key in _OFFICIAL_TOP:
        return _OFFICIAL_TOP[official_key]
    match = _OFFICIAL_BLOCK.match(official_key)
    if match and match.group(2) in _OFFICIAL_IN_BLOCK:
        index, rest = match.groups()
        return tuple(f"transformer_blocks.{index}.{part}" for part in _OFFICIAL_IN_BLOCK[rest])
    if _KV_COMPRESS.match(official_key):
        raise ValueError(f"{official_key!r}: KV-compression weights have no diffusers layout "
                         "(diffusers' PixArtTransformer2DModel cannot represent them); keep the official layout")
    raise ValueError(f"unknown official PixArt key {official_key!r}")


def official_key_split(official_key: str, rows: int) -> list[tuple[str, slice]]:
    """[(diffusers_key, row slice of the official tensor)] for an official tensor with `rows` rows (dim 0)."""
    targets = official_key_targets(official_key)
    if not targets:
        return []
    if rows % len(targets):
        raise ValueError(f"{official_key!r}: {rows} rows cannot be split into {len(targets)} equal parts")
    step = rows // len(targets)
    return [(key, slice(i * step, (i + 1) * step)) for i, key in enumerate(targets)]


def _official_key_for(diffusers_key: str) -> tuple[str, int, int] | None:
    """(official key, piece index, piece count) for a diffusers key; None if it is dropped."""
    if diffusers_key in DIFFUSERS_DROPPED:
        return None
    if diffusers_key in _DIFFUSERS_TOP:
        return _DIFFUSERS_TOP[diffusers_key]
    match = _DIFFUSERS_BLOCK.match(diffusers_key)
    if match and match.group(2) in _DIFFUSERS_IN_BLOCK:
        index, rest = match.groups()
        official, piece, count = _DIFFUSERS_IN_BLOCK[rest]
        return f"blocks.{index}.{official}", piece, count
    raise KeyError(diffusers_key)


def diffusers_key_sources(diffusers_keys: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """{official key: diffusers keys to concatenate along dim 0 (in order)} for a diffusers key set.

    Raises ValueError naming unknown diffusers keys, or fused weights with some pieces missing
    (e.g. `attn1.to_q` present without `attn1.to_k`)."""
    pieces: dict[str, list[str | None]] = {}
    unknown: list[str] = []
    for key in diffusers_keys:
        try:
            found = _official_key_for(key)
        except KeyError:
            unknown.append(key)
            continue
        if found is None:
            continue
        official, piece, count = found
        pieces.setdefault(official, [None] * count)[piece] = key
    if unknown:
        raise ValueError(f"unknown diffusers PixArt keys: {format_keys(unknown)}")
    incomplete = sorted(o for o, parts in pieces.items() if any(p is None for p in parts))
    if incomplete:
        missing = [official_key_targets(o)[i] for o in incomplete for i, p in enumerate(pieces[o]) if p is None]
        raise ValueError(f"incomplete fused diffusers weights, missing: {format_keys(missing)}")
    return {official: tuple(parts) for official, parts in pieces.items()}  # type: ignore[arg-type]


def diffusers_block_sources(block_keys: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """{official block key: diffusers block keys to concatenate along dim 0} for the keys of ONE block, both
    relative to the block (e.g. 'attn.qkv.weight' <- ('attn1.to_q.weight', 'attn1.to_k.weight', ...)).

    For blocks stored outside `transformer_blocks.N.` (the PixArt-δ ControlNet's copied blocks). Raises ValueError
    naming unknown keys or the missing pieces of fused weights."""
    block_keys = list(block_keys)
    pieces: dict[str, list[str | None]] = {}
    unknown = [key for key in block_keys if key not in _DIFFUSERS_IN_BLOCK]
    if unknown:
        raise ValueError(f"unknown diffusers block keys {format_keys(unknown)}")
    for key in block_keys:
        official, piece, count = _DIFFUSERS_IN_BLOCK[key]
        pieces.setdefault(official, [None] * count)[piece] = key
    missing = [_OFFICIAL_IN_BLOCK[o][i] for o, parts in pieces.items() for i, p in enumerate(parts) if p is None]
    if missing:
        raise ValueError(f"incomplete fused diffusers weights, missing {format_keys(missing)}")
    return {official: tuple(parts) for official, parts in pieces.items()}  # type: ignore[arg-type]


def diffusers_to_official(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Diffusers-layout state dict -> official layout (fused qkv / kv_linear concatenated along dim 0)."""
    sources = diffusers_key_sources(sd.keys())
    out: dict[str, Tensor] = {}
    for official, parts in sources.items():
        out[official] = sd[parts[0]] if len(parts) == 1 else torch.cat([sd[p] for p in parts], dim=0)
    return out


def official_to_diffusers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official-layout state dict -> diffusers layout (fused weights split into equal row chunks).

    `pos_embed` is dropped; unknown keys raise ValueError naming all of them."""
    unknown: list[str] = []
    out: dict[str, Tensor] = {}
    for key, tensor in sd.items():
        try:
            splits = official_key_split(key, tensor.shape[0] if tensor.dim() else 1)
        except ValueError:
            unknown.append(key)
            continue
        for target, rows in splits:
            out[target] = tensor if len(splits) == 1 else tensor[rows]
    if unknown:
        raise ValueError(f"official PixArt keys with no diffusers equivalent: {format_keys(unknown)}")
    return out
