"""ControlNet wiring inside `PixArtTransformer.forward` (the `controls=` argument).

As the official `ControlPixArtMSHalf.forward` (PixArt-alpha `diffusion/model/nets/pixart_controlnet.py`) and
diffusers' research `PixArtControlNetTransformerModel` (`examples/research_projects/pixart/controlnet_pixart_alpha.py`):
the control latent goes through the BASE model's patch embedding plus the same position table as x; base block 0
runs; then for i = 1..N, control block i-1 takes (x after base block i-1, c) with the same t0 and caption tokens,
and strength * after_proj(c) is added to x before base block i. Several ControlNets each keep their own c and add
their residuals; every copy 0 reads x before any residual is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .model import PixArtControlNet


@dataclass
class ActiveControl:
    """One validated control of a forward: the branch, its latent [B', in, H, W] and a non-zero strength."""

    net: PixArtControlNet
    latent: Tensor
    strength: float


def _unpack(item) -> tuple:
    try:
        net, latent, strength = item
    except (TypeError, ValueError):
        raise ValueError(f"controls: each item must be (controlnet, control_latent, strength), got "
                         f"{type(item).__name__}") from None
    if not isinstance(net, PixArtControlNet):
        raise ValueError(f"controls: expected a PixArtControlNet (from load_controlnet), got {type(net).__name__}")
    if not isinstance(latent, Tensor):
        raise ValueError(f"{net.name}: the control latent must be a tensor [1 or B, C, H, W], "
                         f"got {type(latent).__name__}")
    return net, latent, float(strength)


def active_controls(model, controls: Sequence, x: Tensor) -> list[ActiveControl]:
    """Check every control against `model` and the latents `x` [B, C, H, W] before any compute; return those
    whose strength is not zero (an empty list runs the plain model). Raises ValueError naming the ControlNet."""
    cfg = model.config
    batch, channels, height, width = x.shape
    active = []
    for item in controls:
        net, latent, strength = _unpack(item)
        if (net.hidden_size, net.num_heads) != (cfg.hidden_size, cfg.num_heads):
            raise ValueError(f"{net.name}: ControlNet width {net.hidden_size} with {net.num_heads} heads does not "
                             f"match the PixArt model's width {cfg.hidden_size} with {cfg.num_heads} heads; use a "
                             "ControlNet made for this base model.")
        if net.num_blocks >= cfg.depth:
            raise ValueError(f"{net.name}: {net.num_blocks} control blocks need a base model deeper than "
                             f"{net.num_blocks} blocks; this one has {cfg.depth}.")
        shape = tuple(latent.shape)
        if latent.ndim != 4 or shape[1:] != (channels, height, width) or shape[0] < 1 or batch % shape[0]:
            raise ValueError(f"{net.name}: control latent {shape} does not fit the latents {tuple(x.shape)}; it "
                             f"must be [1 or a divisor of {batch}, {channels}, {height}, {width}].")
        param = net.controlnet[0].after_proj.weight
        if param.device != x.device or latent.device != x.device:
            raise ValueError(f"{net.name}: ControlNet on {param.device} and control latent on {latent.device}, "
                             f"latents on {x.device}; move them to the same device.")
        if strength != 0.0:
            active.append(ActiveControl(net, latent, strength))
    return active


def _add_scaled(x: Tensor, residual: Tensor, strength: float) -> Tensor:
    """x + strength * residual, in place when autograd is off (x keeps its dtype)."""
    if torch.is_grad_enabled():
        return (x + strength * residual).to(x.dtype)  # [B, N, C]
    return x.add_(residual, alpha=strength)  # [B, N, C]


def run_controlled_blocks(model, tokens: Tensor, controls: list[ActiveControl], t0: Tensor, caption: Tensor,
                          keep: Tensor | None, grid_hw: tuple[int, int]) -> Tensor:
    """The base blocks of `model` with the ControlNets' residuals added; tokens [B, N, C] -> [B, N, C].

    t0 [B, 6, C], caption [B, L, C], keep [B, 1, 1, L] or None, as the base blocks take them."""
    batch, tokens_n, hidden = tokens.shape
    tokens = model.blocks[0](tokens, t0, caption, keep, grid_hw)  # [B, N, C]

    streams, inputs = [], []
    for control in controls:  # every copy 0 reads x after base block 0, before any residual is added
        net = control.net
        net.use_scratch(model.scratch)
        dtype = net.controlnet[0].after_proj.weight.dtype
        c = model.x_embedder(control.latent.to(tokens.dtype))  # [B', N, C] in the compute dtype, as x
        c = (c + model.position_table(*grid_hw, c.device, c.dtype)).to(tokens.dtype)  # [B', N, C]
        c = net.controlnet[0].before_proj(c.to(dtype))  # [B', N, C]
        tiled = tokens.reshape(batch // c.shape[0], c.shape[0], tokens_n, hidden) + c  # [B/B', B', N, C]
        streams.append(tiled.reshape(batch, tokens_n, hidden).to(dtype))  # [B, N, C]
        inputs.append((t0.to(dtype), caption.to(dtype)))  # [B, 6, C], [B, L, C]

    for index in range(1, len(model.blocks)):
        for k, control in enumerate(controls):
            if index > control.net.num_blocks:
                streams[k] = None  # this branch is done: free its stream
                continue
            t0_k, caption_k = inputs[k]
            streams[k], residual = control.net.controlnet[index - 1](streams[k], t0_k, caption_k, keep, grid_hw)
            tokens = _add_scaled(tokens, residual, control.strength)  # [B, N, C]
        tokens = model.blocks[index](tokens, t0, caption, keep, grid_hw)  # [B, N, C]
    return tokens
