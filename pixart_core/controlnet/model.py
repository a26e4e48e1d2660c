"""The PixArt-δ ControlNet-Transformer branch (arXiv:2401.05252, §ControlNet-Transformer).

N trainable copies of the base DiT's blocks (13 of 28 in the release). Copy i takes the control stream c; copy 0
first adds `before_proj(c)` to the base stream after base block 0. Every copy's `after_proj` output, times the
strength, is added to the base stream before base block i + 1. Both projections are zero-initialised, so a fresh
branch leaves the base model unchanged. `apply.py` wires the branch into `PixArtTransformer.forward`.

State-dict keys are the official ones (PixArt-alpha `diffusion/model/nets/pixart_controlnet.py`,
`ControlT2IDitBlockHalf`): `controlnet.{i}.copied_block.*` (a PixArt block), `controlnet.0.before_proj.*`,
`controlnet.{i}.after_proj.*`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..pixart.blocks import PixArtBlock
from ..pixart.linear import ComputeLinear, ScratchPool


class ControlBlock(nn.Module):
    """One copied block with its output projection (and, for block 0, its input projection)."""

    def __init__(self, index: int, hidden_size: int, num_heads: int, mlp_ratio: float, *, qk_norm: bool = False,
                 dtype=None, device=None):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.copied_block = PixArtBlock(hidden_size, num_heads, mlp_ratio, qk_norm=qk_norm, **kw)
        # role "proj": their outputs are consumed at once, before the next projection of the base or copied blocks
        self.before_proj = ComputeLinear(hidden_size, hidden_size, role="proj", **kw) if index == 0 else None
        self.after_proj = ComputeLinear(hidden_size, hidden_size, role="proj", **kw)

    def forward(self, c: Tensor, t0: Tensor, caption: Tensor, keep: Tensor | None,
                grid_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """c [B, N, C] (updated in place with autograd off) -> (new c [B, N, C], residual [B, N, C]).

        The residual is in the compute dtype and, inside the model's forward, lives in a scratch buffer valid
        until the next projection runs."""
        c = self.copied_block(c, t0, caption, keep, grid_hw)  # [B, N, C]
        return c, self.after_proj(c)  # [B, N, C], [B, N, C]


class PixArtControlNet(nn.Module):
    """PixArt-δ ControlNet branch: `num_blocks` control blocks of width `hidden_size` with `num_heads` heads.

    Attributes: `num_blocks`, `hidden_size`, `num_heads`, `mlp_ratio`, `source` (the file it came from),
    `layout` (how that file stored it) and `summary` (one line). Pass it to `PixArtTransformer.forward` as
    `controls=[(controlnet, control_latent, strength)]`."""

    def __init__(self, hidden_size: int = 1152, num_heads: int = 16, num_blocks: int = 13, mlp_ratio: float = 4.0,
                 *, qk_norm: bool = False, source: str = "", layout: str = "official", dtype=None, device=None):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.hidden_size, self.num_heads, self.num_blocks = hidden_size, num_heads, num_blocks
        self.mlp_ratio = mlp_ratio
        self.source, self.layout = source, layout
        self.weights_note = ""  # which weights of a training checkpoint were loaded, e.g. "EMA weights (...)"
        self.controlnet = nn.ModuleList(
            ControlBlock(index, hidden_size, num_heads, mlp_ratio, qk_norm=qk_norm, dtype=dtype, device=device)
            for index in range(num_blocks))
        if torch.device(device or "cpu").type != "meta":
            self.zero_projections()

    @torch.no_grad()
    def zero_projections(self) -> None:
        """The official initialisation of `before_proj` and every `after_proj`: all zeros."""
        for block in self.controlnet:
            for proj in (block.before_proj, block.after_proj):
                if proj is not None:
                    proj.weight.zero_()
                    proj.bias.zero_()

    @classmethod
    def from_transformer(cls, model, num_blocks: int = 13) -> "PixArtControlNet":
        """A fresh branch for `model` (a `PixArtTransformer`): copy i starts as base block i, projections zero."""
        cfg = model.config
        if not 1 <= num_blocks < cfg.depth:
            raise ValueError(f"num_blocks must be between 1 and {cfg.depth - 1} for a depth-{cfg.depth} model, "
                             f"got {num_blocks}")
        param = model.x_embedder.proj.weight
        net = cls(cfg.hidden_size, cfg.num_heads, num_blocks, cfg.mlp_ratio, qk_norm=cfg.qk_norm,
                  source="(from a transformer)", dtype=param.dtype, device=param.device)
        for index, block in enumerate(net.controlnet):
            block.copied_block.load_state_dict(model.blocks[index].state_dict())
        return net

    @property
    def summary(self) -> str:
        """One line, e.g. 'PixArt ControlNet, 13 blocks, width 1152, 16 heads (official layout)'."""
        blocks = f"{self.num_blocks} block{'s' if self.num_blocks != 1 else ''}"
        note = f"; {self.weights_note}" if self.weights_note else ""
        return (f"PixArt ControlNet, {blocks}, width {self.hidden_size}, {self.num_heads} heads "
                f"({self.layout} layout{note})")

    @property
    def name(self) -> str:
        """What error messages call this ControlNet: its source path, else its summary."""
        return self.source or self.summary

    def use_scratch(self, pool: ScratchPool | None) -> None:
        """Let the linears write into `pool` (the base model's buffers) while that pool is lending."""
        for module in self.modules():
            if isinstance(module, ComputeLinear):
                module.scratch = pool

    def forward(self, *args, **kwargs):
        raise TypeError("a PixArtControlNet is not called on its own; pass it to the PixArt transformer as "
                        "controls=[(controlnet, control_latent, strength)]")

    def extra_repr(self) -> str:
        return f"num_blocks={self.num_blocks}, hidden_size={self.hidden_size}, num_heads={self.num_heads}"
