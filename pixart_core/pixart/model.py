"""PixArt-α / PixArt-Σ diffusion transformer (arXiv:2310.00426, arXiv:2403.04692) in plain PyTorch.

Parameter names equal the official checkpoint keys, so an official state dict (minus `pos_embed`) loads
with `strict=True`; diffusers weights go through `convert.diffusers_to_official`. The forward follows the
official `PixArtMS.forward` (PixArt-alpha repository, `diffusion/model/nets/PixArtMS.py`): the sin-cos
position table is recomputed for each latent size (cached per size/device/dtype), padded caption tokens are
ignored exactly, and the final layer uses t.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .blocks import FinalLayer, PixArtBlock
from .capture import AttentionCapture
from .config import PixArtConfig
from .embeddings import CaptionEmbedder, PatchEmbed, SizeEmbedder, TimestepEmbedder, sincos_pos_embed_2d
from .linear import ComputeLinear, ScratchPool
from .regions import RegionalPrompt, RegionalPrompting
from ..controlnet.apply import active_controls, run_controlled_blocks


class PixArtTransformer(nn.Module):
    """PixArt DiT: `forward(x, timestep, context, context_mask, resolution, aspect_ratio, controls)` -> [B, out,
    H, W]; `controls` adds PixArt-δ ControlNets (`pixart_core.controlnet`)."""

    def __init__(self, config: PixArtConfig, *, dtype=None, device=None):
        super().__init__()
        if config.micro_condition and config.hidden_size % 3:
            raise ValueError(f"micro-conditioning needs hidden_size divisible by 3, got {config.hidden_size}")
        self.config = config
        hidden = config.hidden_size
        kw = {"dtype": dtype, "device": device}
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, hidden, **kw)
        self.t_embedder = TimestepEmbedder(hidden, **kw)
        self.t_block = nn.Sequential(nn.SiLU(), ComputeLinear(hidden, 6 * hidden, **kw))
        null_tokens = config.model_max_length if config.has_null_caption else None
        self.y_embedder = CaptionEmbedder(config.caption_channels, hidden, null_tokens, **kw)
        if config.micro_condition:
            self.csize_embedder = SizeEmbedder(hidden // 3, **kw)
            self.ar_embedder = SizeEmbedder(hidden // 3, **kw)
        compressed = set(config.kv_compress_layers) if config.kv_compress_ratio > 1 else set()
        self.blocks = nn.ModuleList(
            PixArtBlock(hidden, config.num_heads, config.mlp_ratio, qk_norm=config.qk_norm,
                        kv_compress_ratio=config.kv_compress_ratio if index in compressed else 1,
                        kv_compress_sampling=config.kv_compress_sampling, **kw)
            for index in range(config.depth)
        )
        self.final_layer = FinalLayer(hidden, config.patch_size, config.out_channels, **kw)
        self._pos_cache: dict[tuple, Tensor] = {}
        self.scratch = ScratchPool()  # output buffers shared by the linears of one role, lent per forward
        for module in self.modules():
            if isinstance(module, ComputeLinear):
                module.scratch = self.scratch

    def position_table(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Cached sin-cos table [h*w, C] for a (h, w) patch grid (computed in float64, then cast)."""
        key = (height, width, str(device), dtype)
        table = self._pos_cache.get(key)
        if table is None:
            table = sincos_pos_embed_2d(self.config.hidden_size, height, width, self.config.base_size,
                                        self.config.pe_interpolation, device=device).to(dtype)  # [h*w, C]
            if device.type != "meta":
                self._pos_cache[key] = table
        return table

    def _apply(self, fn, recurse=True):
        self._pos_cache = {}  # device/dtype moves invalidate the cached tables
        return super()._apply(fn, recurse)

    def embed_conditions(self, timestep: Tensor, batch: int, x: Tensor, resolution: Tensor | None,
                         aspect_ratio: Tensor | None) -> Tensor:
        """t = t_embedder(timestep) (+ [csize(h, w), ar] for micro-conditioned models) -> [B, C]."""
        device = x.device
        timestep = torch.as_tensor(timestep, device=device).reshape(-1).expand(batch)  # [B]
        t = self.t_embedder(timestep)  # [B, C]
        if not self.config.micro_condition:
            return t
        height, width = x.shape[-2:]
        if resolution is None:
            resolution = torch.tensor([[height * 8.0, width * 8.0]], device=device)  # [1, 2]
        if aspect_ratio is None:
            aspect_ratio = torch.tensor([height / width], device=device)  # [1]
        resolution = torch.as_tensor(resolution, device=device).reshape(-1, 2).expand(batch, 2)  # [B, 2]
        aspect_ratio = torch.as_tensor(aspect_ratio, device=device).reshape(-1, 1).expand(batch, 1)  # [B, 1]
        size = torch.cat([self.csize_embedder(resolution), self.ar_embedder(aspect_ratio)], dim=1)  # [B, C]
        return t + size.to(t.dtype)  # [B, C]

    @staticmethod
    def caption_keep(context_mask: Tensor | None, batch: int, length: int) -> tuple[int, Tensor | None]:
        """Tokens to keep and an attention mask for padded captions.

        Returns (kept_length, keep): caption positions >= kept_length are padding in every row and are cut
        off; keep is a bool [B, 1, 1, kept_length] mask (True = attend) or None when every kept token is
        valid. A row whose mask is all zero attends to all its tokens (the softmax of diffusers' uniform
        -10000 bias) instead of producing NaN."""
        if context_mask is None:
            return length, None
        if length == 0:
            raise ValueError("context has no tokens")
        valid = context_mask.reshape(batch, length) != 0  # [B, L]
        valid = valid | ~valid.any(dim=1, keepdim=True)  # [B, L]; empty rows keep everything
        columns = valid.any(dim=0)  # [L]
        kept = int(length - torch.argmax(columns.flip(0).int()).item())
        valid = valid[:, :kept]  # [B, kept]
        if bool(valid.all()):
            return kept, None
        return kept, valid[:, None, None, :]  # [B, 1, 1, kept]

    def forward(self, x: Tensor, timestep: Tensor | float, context: Tensor, context_mask: Tensor | None = None,
                resolution: Tensor | None = None, aspect_ratio: Tensor | None = None,
                controls: Sequence | None = None) -> Tensor:
        """Predict [ε, learned-σ value] for latents.

        x [B, in, H, W] (H, W multiples of the patch size); timestep [B] (DDPM index, fractional allowed);
        context [B, L, caption_channels] T5 features; context_mask [B, L] (1 = keep); resolution [B, 2]
        (h, w in pixels) and aspect_ratio [B] or [B, 1] for micro-conditioned models (default: from x);
        controls: PixArt-δ ControlNets as (controlnet, control_latent [1 or B', in, H, W] in x's scaled latent
        space, tiled over the batch, strength) items (`pixart_core.controlnet.apply`); none, or strength 0,
        runs the plain model. Returns [B, out_channels, H, W] in x's dtype."""
        batch, _, height, width = x.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"latent size {height}x{width} is not a multiple of the patch size {p}")
        if context.shape[0] != batch:
            raise ValueError(f"context batch {context.shape[0]} does not match latent batch {batch}")
        active = active_controls(self, controls, x) if controls else []  # checked before any compute
        grid_hw = (height // p, width // p)
        dtype = self.x_embedder.proj.weight.dtype

        tokens = self.x_embedder(x.to(dtype))  # [B, N, C] in the compute dtype
        pos = self.position_table(*grid_hw, tokens.device, tokens.dtype)  # [N, C]
        tokens = (tokens + pos if torch.is_grad_enabled() else tokens.add_(pos)).to(dtype)  # [B, N, C]
        t = self.embed_conditions(timestep, batch, x, resolution, aspect_ratio).to(dtype)  # [B, C]
        t0 = self.t_block(t).to(dtype).view(batch, 6, -1)  # [B, 6, C]

        kept, keep = self.caption_keep(context_mask, batch, context.shape[1])
        caption = context[:, :kept].to(dtype)  # [B, L', caption_channels]
        caption = self.y_embedder(caption)  # [B, L', C] in the compute dtype

        with self.scratch.lend():
            if active:
                tokens = run_controlled_blocks(self, tokens, active, t0, caption, keep, grid_hw)  # [B, N, C]
            else:
                for block in self.blocks:
                    tokens = block(tokens, t0, caption, keep, grid_hw)  # [B, N, C]
            out = self.final_layer(tokens, t)  # [B, N, p*p*out]
            return self.unpatchify(out, grid_hw).to(x.dtype)  # [B, out, H, W]

    def capture_attention(self, blocks: Iterable[int] | None = None) -> AttentionCapture:
        """Context manager recording the cross-attention of `blocks` (indices; None = all) during forwards:
        `with model.capture_attention() as cap: model(...)`, then `cap.cross_attention()` [B, h*w, L]
        (`pixart_core.pixart.capture`)."""
        return AttentionCapture(self, blocks)

    def regional_prompting(self, regional: RegionalPrompt, rows: Sequence[int] | None = None) -> RegionalPrompting:
        """Context manager making every cross-attention prompt regionally for batch `rows` (None: all):
        `context, mask, rows = regional.model_inputs(negative, negative_mask)`, then
        `with model.regional_prompting(regional, rows): model(x, t, context, mask)` (`pixart_core.pixart.regions`)."""
        return RegionalPrompting(self, regional, rows)

    def unpatchify(self, tokens: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        """[B, h*w, p*p*c] -> [B, c, h*p, w*p] (token layout (p_h, p_w, c), as official `unpatchify`)."""
        batch = tokens.shape[0]
        h, w = grid_hw
        p, c = self.config.patch_size, self.config.out_channels
        grid = tokens.reshape(batch, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)  # [B, c, h, p, w, p]
        return grid.reshape(batch, c, h * p, w * p)  # [B, c, H, W]

