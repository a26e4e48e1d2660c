"""A lower-bound memory estimate for one generation, and a check that refuses sizes the machine cannot hold.

The estimate counts only what a run cannot avoid, so a refusal is honest ("needs at least about"):
- the DiT working set: B_eff = batch x 2 (classifier-free guidance) sequences of N = (h/16)*(w/16) tokens
  (8x VAE, patch 2) at `hidden_size` wide; one block holds ~ACTIVATION_WIDTHS such [B_eff, N, C] tensors
  (qkv, attention output, 4x MLP). torch's `scaled_dot_product_attention` uses flash / memory-efficient kernels,
  so the B*heads*N^2 score matrix is not counted (it would be without them);
- the VAE decoder's last 128-channel up block at the generation size (at most 1024x1024: larger is tiled);
- the output pixels at the requested size (float32 [B, 3, H, W], twice: resize and clamp).
"""

from __future__ import annotations

import os

import torch

GIB = 1024**3
ACTIVATION_WIDTHS = 10  # [B_eff, N, C] tensors alive in one DiT block: q, k, v, attention out, 4x MLP, residual
VAE_DECODER_CHANNELS = 128  # channels of the AutoencoderKL decoder's last up block (full resolution)
UNTILED_DECODE_AREA = 1024 * 1024  # pixels; larger images are decoded in tiles (vae/model.py AUTO_TILE_AREA)


def estimate_bytes(gen_h: int, gen_w: int, height: int, width: int, batch: int, *, hidden_size: int = 1152,
                   dtype_bytes: int = 4, guidance: bool = True, decode: bool = True) -> int:
    """Bytes a generation needs at least: generation size gen_h x gen_w (binned), output height x width;
    decode=False counts the sampling only (the ComfyUI sampler node returns latents)."""
    seqs = batch * (2 if guidance else 1)
    tokens = (gen_h // 16) * (gen_w // 16)
    latent = seqs * 4 * (gen_h // 8) * (gen_w // 8) * 4  # [B_eff, 4, h, w] float32
    dit = seqs * tokens * hidden_size * dtype_bytes * ACTIVATION_WIDTHS  # [B_eff, N, C] x widths
    decoded_area = min(gen_h * gen_w, UNTILED_DECODE_AREA)  # larger latents are decoded in tiles
    decoder = batch * VAE_DECODER_CHANNELS * decoded_area * dtype_bytes * 2  # [B, 128, H, W] in and out of a conv
    output = batch * 3 * height * width * 4 * 2  # [B, 3, H, W] float32, resized then clamped
    return latent + dit + (max(decoder, output) + output if decode else 0)


def available_bytes(device: torch.device | str) -> int | None:
    """Free memory on `device`: CUDA from `torch.cuda.mem_get_info`, CPU from /proc/meminfo MemAvailable
    (else physical pages x page size); None when unknown (mps, or no way to ask)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(gen_h: int, gen_w: int, height: int, width: int, batch: int, device, *,
               budget: int | None = None, argument: str = "--height/--width", **kwargs) -> None:
    """Raise ValueError naming `argument` when the estimate exceeds the memory `device` has free, or `budget`
    bytes when the caller knows better (ComfyUI offloads its cached models on demand, so there the budget is
    the device's total memory)."""
    need = estimate_bytes(gen_h, gen_w, height, width, batch, **kwargs)
    have = budget if budget is not None else available_bytes(device)
    if have is not None and need > have:
        binned = f" (sampled at {gen_h}x{gen_w})" if (gen_h, gen_w) != (height, width) else ""
        kind = "in all" if budget is not None else "free"
        raise ValueError(f"{argument} {height}x{width}{binned} with batch {batch} needs about "
                         f"{need / GIB:.1f} GiB at least, this machine has {have / GIB:.1f} GiB {kind} on "
                         f"{torch.device(device)}; pass a smaller size or batch")
