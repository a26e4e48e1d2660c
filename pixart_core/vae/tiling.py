"""Tiled encode/decode: run a VAE half on overlapping tiles and cross-fade them linearly into one output.

Tiles are laid out on the latent grid (one latent pixel = `downscale` image pixels), so encode and decode tile
the same way. Along each axis the tiles are equal, at most `tile` latent pixels long, evenly spread, and
neighbours overlap by at least `overlap`. Inside an overlap the
left/top tile fades out and the right/bottom tile fades in linearly, and the weights are renormalised, so there
is no visible seam. Each tile is computed, weighted and added into a preallocated float32 output at once, so
peak memory is one tile's activations plus the output, whatever the image size.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Equal [start, stop) spans of at most `tile` cells covering `length`, neighbours overlapping by >= `overlap`.

    The count is the fewest tiles of `tile` cells that cover `length` with that overlap; the spans are then
    shrunk to the smallest equal size that still covers it, and spread evenly (less wasted work at awkward sizes).
    """
    if tile < 1 or not 0 <= overlap <= tile // 2:
        raise ValueError(f"tile {tile} and overlap {overlap}: need tile >= 1 and 0 <= overlap <= tile // 2")
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length - overlap) / count) + overlap  # <= tile
    starts = [round(i * (length - size) / (count - 1)) for i in range(count)]
    return [(start, start + size) for start in starts]


def blend_ramp(spans: list[tuple[int, int]], index: int, scale: int) -> torch.Tensor:
    """Weights of tile `index` in output cells (span * scale): linear 0->1 over the overlap with each neighbour."""
    start, stop = spans[index]
    size = (stop - start) * scale
    position = torch.arange(size, dtype=torch.float32) + 0.5  # [size] cell centres
    weight = torch.ones(size)  # [size]
    if index > 0:
        fade_in = (spans[index - 1][1] - start) * scale
        if fade_in > 0:
            weight = torch.minimum(weight, position / fade_in)  # [size]
    if index < len(spans) - 1:
        fade_out = (stop - spans[index + 1][0]) * scale
        if fade_out > 0:
            weight = torch.minimum(weight, (size - position) / fade_out)  # [size]
    return weight


def tiled_map(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, grid: tuple[int, int],
              tile: int, overlap: int, in_scale: int, out_scale: int, out_channels: int) -> torch.Tensor:
    """Apply `fn` tile by tile and blend the results.

    `grid` is the (h, w) latent grid; a tile of grid cells [a, b) reads `x` cells [a*in_scale, b*in_scale) and
    `fn` must return `out_scale` output cells per grid cell (decode: in 1, out 8; encode: in 8, out 1).
    Returns float32 [B, out_channels, h*out_scale, w*out_scale].
    """
    rows = tile_spans(grid[0], tile, overlap)
    cols = tile_spans(grid[1], tile, overlap)
    row_ramps = [blend_ramp(rows, i, out_scale).to(x.device) for i in range(len(rows))]
    col_ramps = [blend_ramp(cols, j, out_scale).to(x.device) for j in range(len(cols))]
    out = torch.zeros(x.shape[0], out_channels, grid[0] * out_scale, grid[1] * out_scale,
                      dtype=torch.float32, device=x.device)  # [B, C_out, H_out, W_out]
    row_total = torch.zeros(grid[0] * out_scale, device=x.device)  # [H_out]
    col_total = torch.zeros(grid[1] * out_scale, device=x.device)  # [W_out]
    for (top, bottom), row_ramp in zip(rows, row_ramps):
        row_total[top * out_scale:bottom * out_scale] += row_ramp
    for (left, right), col_ramp in zip(cols, col_ramps):
        col_total[left * out_scale:right * out_scale] += col_ramp
    for (top, bottom), row_ramp in zip(rows, row_ramps):
        for (left, right), col_ramp in zip(cols, col_ramps):
            piece = x[:, :, top * in_scale:bottom * in_scale, left * in_scale:right * in_scale]  # [B, C_in, th, tw]
            result = fn(piece).float()  # [B, C_out, th', tw']
            expected = ((bottom - top) * out_scale, (right - left) * out_scale)
            if tuple(result.shape[-2:]) != expected:
                raise ValueError(f"tile function returned {tuple(result.shape[-2:])}, expected {expected}")
            result *= row_ramp[:, None] * col_ramp[None, :]  # [B, C_out, th', tw']
            out[:, :, top * out_scale:bottom * out_scale, left * out_scale:right * out_scale] += result
            del result
    out /= row_total[:, None] * col_total[None, :]  # [B, C_out, H_out, W_out]
    return out
