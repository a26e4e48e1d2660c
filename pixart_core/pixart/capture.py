"""Cross-attention capture on a `PixArtTransformer`: where image tokens look in the caption.

`with model.capture_attention(blocks=None) as cap: model(...)` records, for every forward call inside the
block, the softmax probabilities of image tokens over caption tokens in the chosen blocks' cross-attention,
recomputed from the same q and k the block feeds to SDPA (masked softmax of q·kᵀ/√d; the cross-attention
layer of PixArt-α, arXiv:2310.00426). Only a running float32 sum [B, N, L] is kept: the per-head
probabilities are formed a chunk of query tokens at a time and folded in at once, and self-attention is never
touched. The model's outputs are unchanged (nothing the block computes is modified). Outside the `with` block
the modules carry no recorder and the forward is the plain one.

`token_maps` turns the map into per-token grids [B, h, w] and `upsample_map` brings a grid to pixel size,
as training-free attention mattes use them (Alfie, arXiv:2408.14826).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ELEMENTS = 1 << 22  # per-chunk logits budget: B*heads*rows*L' float32 values (16 MiB)


class AttentionRecorder:
    """Running sum of head-summed cross-attention probabilities over blocks and calls.

    `total` [B, N, L] float32 is the only tensor held; `weight` counts the (block, head) terms summed into it."""

    def __init__(self) -> None:
        self.total: Tensor | None = None  # [B, N, L] float32
        self.weight = 0
        self.calls = 0
        self.grid_hw: tuple[int, int] | None = None

    def begin_call(self, batch: int, grid_hw: tuple[int, int], length: int, device: torch.device) -> None:
        """Prepare for one forward on `batch` rows of a (h, w) token grid with `length` caption tokens."""
        shape = (batch, grid_hw[0] * grid_hw[1], length)
        if self.total is None:
            self.total = torch.zeros(shape, dtype=torch.float32, device=device)  # [B, N, L]
        elif tuple(self.total.shape) != shape or self.total.device != torch.device(device):
            raise ValueError(f"capture_attention: this forward has batch {batch}, {shape[1]} image tokens and "
                             f"{length} caption tokens on {device}, earlier ones {tuple(self.total.shape)} on "
                             f"{self.total.device}; open a new capture for a different batch, size or caption length")
        self.grid_hw = grid_hw

    def record(self, q: Tensor, k: Tensor, keep: Tensor | None) -> None:
        """Add softmax(q kᵀ/√d, masked by keep) summed over heads; q [B, H, N, d], k [B, H, L', d], keep
        bool [B, 1, 1, L'] or None. Caption columns past L' (padding cut by the model) stay zero."""
        if self.total is None:
            raise RuntimeError("capture_attention: a block recorded outside a forward of the captured model; "
                               "call the model itself, not its blocks")
        batch, heads, tokens, head_dim = q.shape
        length = k.shape[2]
        if self.total.shape[0] != batch or self.total.shape[1] != tokens or self.total.shape[2] < length:
            raise ValueError(f"capture_attention: block attention of shape q {tuple(q.shape)}, k {tuple(k.shape)} "
                             f"does not fit the capture {tuple(self.total.shape)}")
        with torch.no_grad():
            keys = k.detach().to(torch.float32) * head_dim ** -0.5  # [B, H, L', d] scaled once
            keys = keys.reshape(batch * heads, length, head_dim).transpose(1, 2)  # [B*H, d, L']
            bias = torch.zeros(batch, 1, 1, length, dtype=torch.float32, device=q.device)  # [B, 1, 1, L']
            if keep is not None:
                bias.masked_fill_(~keep, float("-inf"))  # [B, 1, 1, L']
            bias = bias.expand(batch, heads, 1, length).reshape(batch * heads, 1, length)  # [B*H, 1, L']
            rows = max(1, CHUNK_ELEMENTS // max(1, batch * heads * length))
            for start in range(0, tokens, rows):
                stop = min(tokens, start + rows)
                query = q[:, :, start:stop].detach().to(torch.float32)  # [B, H, n, d]
                query = query.reshape(batch * heads, stop - start, head_dim)  # [B*H, n, d]
                logits = torch.baddbmm(bias, query, keys)  # [B*H, n, L'] (mask added in the GEMM)
                probs = torch.softmax(logits, dim=-1).view(batch, heads, stop - start, length)  # [B, H, n, L']
                self.total[:, start:stop, :length].add_(probs.sum(dim=1))  # [B, n, L']
        self.weight += heads

    def mean(self) -> Tensor:
        """[B, N, L] mean over heads, blocks and calls (float32)."""
        if self.total is None or self.weight == 0:
            raise ValueError("capture_attention: no cross-attention was recorded; run the model inside the "
                             "`with model.capture_attention() as cap:` block first")
        return self.total / self.weight  # [B, N, L]


class AttentionCapture:
    """Context manager that records cross-attention of `model.blocks[i]` for i in `blocks` (None: all).

    Results (also readable after exit): `cross_attention()` [B, h*w, L], `token_maps(...)` [B, h, w],
    `grid_hw` (the token grid of the last call) and `calls` (forward calls recorded)."""

    def __init__(self, model, blocks: Iterable[int] | None = None):
        depth = len(model.blocks)
        if blocks is None:
            indices = list(range(depth))
        else:
            indices = sorted({int(index) for index in blocks})
            bad = [index for index in indices if not 0 <= index < depth]
            if bad:
                raise ValueError(f"capture_attention: blocks {bad} out of range; this model has blocks 0..{depth - 1}")
            if not indices:
                raise ValueError("capture_attention: blocks is empty; pass block indices or None for all blocks")
        self.model = model
        self.blocks = tuple(indices)
        self.recorder = AttentionRecorder()
        self._signature = inspect.signature(model.forward)
        self._hooks: list = []
        self._modules: list = []

    def __enter__(self) -> "AttentionCapture":
        modules = [self.model.blocks[index].cross_attn for index in self.blocks]
        for index, module in zip(self.blocks, modules):
            if module.recorder is not None:
                raise RuntimeError(f"capture_attention: block {index} is already being captured; "
                                   "leave the other capture first")
        for module in modules:
            module.recorder = self.recorder
        self._modules = modules
        self._hooks = [self.model.register_forward_pre_hook(self._begin_call, with_kwargs=True),
                       self.model.register_forward_hook(self._end_call)]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        for module in self._modules:
            module.recorder = None
        self._hooks, self._modules = [], []

    def _begin_call(self, model, args: tuple, kwargs: dict) -> None:
        bound = self._signature.bind(*args, **kwargs)
        x, context = bound.arguments["x"], bound.arguments["context"]
        p = model.config.patch_size
        grid_hw = (x.shape[-2] // p, x.shape[-1] // p)
        self.recorder.begin_call(x.shape[0], grid_hw, context.shape[1], x.device)

    def _end_call(self, model, args: tuple, output: Tensor) -> None:
        self.recorder.calls += 1

    @property
    def calls(self) -> int:
        """Forward calls recorded since entry."""
        return self.recorder.calls

    @property
    def grid_hw(self) -> tuple[int, int] | None:
        """(h, w) token grid of the last recorded call (None before any)."""
        return self.recorder.grid_hw

    def cross_attention(self) -> Tensor:
        """[B, h*w, L] float32: image-token -> caption-token probabilities, mean over heads, captured blocks and
        calls. Padding caption columns are zero and each row sums to 1."""
        return self.recorder.mean()

    def token_maps(self, token_indices: Sequence[int] | Tensor | int,
                   batch_index: int | slice | Sequence[int] | Tensor | None = None) -> Tensor:
        """Probabilities summed over the caption positions `token_indices`, as grids [B, h, w] (float32).

        `batch_index` picks rows (e.g. the conditional half of a CFG batch); an int keeps a batch of 1."""
        probs = self.cross_attention()  # [B, N, L]
        if batch_index is not None:
            probs = probs[[batch_index] if isinstance(batch_index, int) else batch_index]  # [B', N, L]
        length = probs.shape[-1]
        index = torch.as_tensor(token_indices, dtype=torch.long, device=probs.device).reshape(-1)  # [T]
        if index.numel() == 0:
            raise ValueError("token_maps: token_indices is empty; pass the caption positions of the subject")
        if bool(((index < -length) | (index >= length)).any()):
            raise ValueError(f"token_maps: token_indices {index.tolist()} out of range for {length} caption tokens")
        height, width = self.grid_hw
        summed = probs.index_select(-1, index % length).sum(dim=-1)  # [B', N]
        return summed.reshape(-1, height, width)  # [B', h, w]


def upsample_map(grid: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of token maps [B, h, w] to [B, 1, H, W] (e.g. latent or pixel size)."""
    if grid.ndim != 3:
        raise ValueError(f"upsample_map: expected maps [B, h, w], got shape {tuple(grid.shape)}")
    return F.interpolate(grid[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)  # [B, 1, H, W]
