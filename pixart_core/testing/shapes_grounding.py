"""Attention grounding for the shapes world's DiT: each phrase's cross-attention kept inside its own shape.

The diffusion loss alone teaches a tiny DiT slowly which phrase an image token should read ("a red circle on the
left" for the tokens on the left): colours get swapped between shapes long after places are right. The shapes
world knows every shape's mask, so training adds TokenCompose's token loss (arXiv:2312.03626, §3.2): for each
phrase with ground-truth region R, the share of the phrase's attention that falls inside R,
``inside = Σ_p A(p)·R(p) / Σ_p A(p)``, is pushed to 1 by ``(1 - inside)²``. A is the cross-attention of image
tokens over the phrase's caption tokens, averaged over heads and blocks (what `capture_attention` reports); R is
the shape's coverage of each token cell (for the background phrase, what no shape covers). The committed plan
grounds only the first head and keeps the loss's gradient to the cross-attention's q and k projections
(`recording`): grounding every head through the residual stream sharpened the maps but spoiled the pictures
(benchmarks/RESULTS.md). The loss only trains the weights; the model and its layout are the ordinary PixArt ones.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .shapes_text import phrase_spans

MAX_SHAPES = 3  # shapes_data draws 1-3 shapes
GROUPS = MAX_SHAPES + 1  # each shape's phrase, then the background phrase (last)


def token_regions(masks: np.ndarray, grid: int) -> np.ndarray:
    """float32 [GROUPS, grid*grid]: coverage of each token cell by each shape (masks [K, S, S], 0..1, K <= 3;
    rows of absent shapes are zero; K may be 0), and in the last row what no shape covers."""
    size = masks.shape[-1]
    cell = size // grid
    pooled = masks.reshape(masks.shape[0], grid, cell, grid, cell).mean(axis=(2, 4))  # [K, g, g]
    regions = np.zeros((GROUPS, grid * grid), np.float32)
    regions[:masks.shape[0]] = pooled.reshape(masks.shape[0], grid * grid)
    regions[-1] = np.clip(1.0 - regions[:MAX_SHAPES].sum(axis=0), 0.0, 1.0)
    return regions


@torch.no_grad()
def grounding_targets(tokenizer, layouts: list, regions: np.ndarray, length: int) -> dict[str, Tensor]:
    """Per scene: which caption tokens belong to each phrase (bool [N, GROUPS, length]), each phrase's region
    (float [N, GROUPS, tokens]) and which phrases exist (bool [N, GROUPS]). `layouts` holds (background, specs)."""
    members = np.zeros((len(layouts), GROUPS, length), bool)
    valid = np.zeros((len(layouts), GROUPS), bool)
    for row, (background, specs) in enumerate(layouts):
        *shape_spans, background_span = phrase_spans(tokenizer, background, specs)
        for group, (start, stop) in list(enumerate(shape_spans)) + [(GROUPS - 1, background_span)]:
            members[row, group, start:stop] = True
            valid[row, group] = True
    return {"members": torch.from_numpy(members), "regions": torch.from_numpy(regions),
            "valid": torch.from_numpy(valid)}


class GroundingRecorder:
    """Takes an `AttentionRecorder`'s place on cross-attention modules during training: keeps each block's
    head-mean probabilities [B, N, L'] with their autograd graph (of the first `heads` heads; 0: all)."""

    def __init__(self, heads: int = 0) -> None:
        self.maps: list[Tensor] = []
        self.heads = heads

    def record(self, q: Tensor, k: Tensor, keep: Tensor | None) -> None:
        """q [B, H, N, d], k [B, H, L', d], keep bool [B, 1, 1, L'] or None."""
        if self.heads:
            q, k = q[:, :self.heads], k[:, :self.heads]  # [B, h, N, d], [B, h, L', d]
        logits = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [B, H, N, L']
        if keep is not None:
            logits = logits.masked_fill(~keep, float("-inf"))  # [B, H, N, L']
        self.maps.append(torch.softmax(logits, dim=-1).mean(dim=1))  # [B, N, L']


class ProjectionsOnly:
    """Stands in for the recorder on one cross-attention module: recomputes q and k from the module's inputs cut
    from the autograd graph, so a loss on the recorded maps trains only that module's `q_linear` and `kv_linear`
    (not the residual stream that also draws the picture)."""

    def __init__(self, recorder: GroundingRecorder, module) -> None:
        self.recorder, self.module = recorder, module
        self.inputs: tuple[Tensor, Tensor] | None = None
        self.handle = module.register_forward_pre_hook(self._keep_inputs)

    def _keep_inputs(self, module, args) -> None:
        self.inputs = args[0], args[1]  # x [B, N, C], context [B, L, C]

    def record(self, q: Tensor, k: Tensor, keep: Tensor | None) -> None:
        x, context = (tensor.detach() for tensor in self.inputs)
        batch, tokens, _ = x.shape
        heads, head_dim = self.module.num_heads, self.module.head_dim
        q = self.module.q_linear(x).view(batch, tokens, heads, head_dim).transpose(1, 2)  # [B, H, N, d]
        kv = self.module.kv_linear(context).view(batch, -1, 2, heads, head_dim)  # [B, L, 2, H, d]
        self.recorder.record(q, kv[:, :, 0].transpose(1, 2).to(q.dtype), keep)  # k [B, H, L, d]


@contextmanager
def recording(model, projections_only: bool = False, heads: int = 0):
    """`with recording(model) as recorder: model(...)`: every block's cross-attention (the mean of its first
    `heads` heads, 0: all) lands in `recorder.maps`; with `projections_only`, their gradient reaches only the
    cross-attention's query and key projections."""
    recorder = GroundingRecorder(heads)
    modules = [block.cross_attn for block in model.blocks]
    stand_ins = [ProjectionsOnly(recorder, module) if projections_only else recorder for module in modules]
    for module, stand_in in zip(modules, stand_ins):
        module.recorder = stand_in
    try:
        yield recorder
    finally:
        for module, stand_in in zip(modules, stand_ins):
            module.recorder = None
            if projections_only:
                stand_in.handle.remove()


def grounding_loss(maps: list[Tensor], members: Tensor, regions: Tensor, valid: Tensor,
                   pixel_weight: float = 0.0) -> Tensor:
    """Mean over the valid phrases of (1 - inside)², plus `pixel_weight` times TokenCompose's pixel term (its
    L_pixel: binary cross-entropy of the phrase's map, scaled so its peak is 1, against the region's coverage
    per token, so the map covers the whole shape rather than peaking in one cell): maps [B, N, L'] per block,
    members bool [B, G, L], regions [B, G, N], valid bool [B, G]. Caption columns the model cut (padding past
    L') hold no phrase."""
    attention = torch.stack(maps).mean(dim=0)  # [B, N, L']
    length = attention.shape[-1]
    phrase = torch.matmul(attention, members[..., :length].transpose(1, 2).to(attention.dtype))  # [B, N, G]
    inside = (phrase * regions.transpose(1, 2)).sum(dim=1) / phrase.sum(dim=1).clamp_min(1e-6)  # [B, G]
    per_phrase = (1.0 - inside).pow(2)  # [B, G]
    if pixel_weight > 0:
        scaled = (phrase / phrase.amax(dim=1, keepdim=True).clamp_min(1e-6)).clamp(1e-4, 1 - 1e-4)  # [B, N, G]
        target = regions.transpose(1, 2).to(scaled.dtype)  # [B, N, G]
        cross_entropy = F.binary_cross_entropy(scaled, target, reduction="none").mean(dim=1)  # [B, G]
        per_phrase = per_phrase + pixel_weight * cross_entropy
    weight = valid.to(attention.dtype)  # [B, G]
    return (per_phrase * weight).sum() / weight.sum().clamp_min(1.0)
