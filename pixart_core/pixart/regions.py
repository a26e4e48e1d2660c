"""Regional prompting inside the PixArt DiT's cross-attention: one picture, several captions placed by boxes.

The caption the model sees is the concatenation [global; region 1; ...; region K; (background)] along the token
axis (`RegionalPrompt.context`, each part cut to its last valid token). In every cross-attention layer a
regional row blends two attentions of the same queries (the base/regional split of the Regional Prompter
extension, github.com/hako-mikan/sd-webui-regional-prompter, here per token inside one DiT pass):

    out = β · attn(global columns only) + (1 − β) · attn(regional columns),   β = `base_ratio`

where in the regional attention an image token in box k sees the global caption plus region k's caption (a later
box wins where boxes overlap: regions are listed bottom to top), and a token outside every box sees the global
caption plus the background caption (or the global caption only). The blend is taken on the head outputs,
before the output projection (`proj` is affine, so this equals blending the projected outputs). Box edges are
hard: a token belongs to a box when its centre lies inside it (left/top edges inclusive, right/bottom exclusive);
a box that contains no token centre takes the one token containing its own centre. The β share of global
attention is what keeps one light and one style across the edges.

Boxes are in `canvas` units (pixels of the image, x0, y0, x1, y1) and are mapped to whatever token grid a forward
runs at by proportion; at the canvas' own latent size that is pixel / (8 · patch).

Use: `context, mask, rows = regional.model_inputs(negative, negative_mask)` then
`with model.regional_prompting(regional, rows=rows): model(x, t, context, mask)`. Rows not in `rows` (the
unconditional half of a CFG batch) run the plain cross-attention; columns past `RegionalPrompt.length` (padding
to a longer negative caption) are never seen by regional rows. ControlNets passed to the forward prompt
regionally too. Inside `capture_attention` the recorded
probabilities of regional rows are the blended ones over the concatenated columns (`RegionalPrompt.spans`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import capture
from .attention import CrossAttention

DEFAULT_BASE_RATIO = 0.2  # the Regional Prompter extension's default "Base Ratio"


@dataclass(frozen=True)
class Region:
    """One regional caption: T5 features `context` [B or 1, Lk, caption_channels], `mask` [B or 1, Lk] (1 = token;
    None = all), `box` (x0, y0, x1, y1) in canvas units, and a `name` for messages (default 'region {index}')."""

    context: Tensor
    box: Sequence[float]
    mask: Tensor | None = None
    name: str = ""


def _valid_length(mask: Tensor) -> int:
    """1 + the last column valid in any row of mask [B, L] (at least 1)."""
    columns = (mask != 0).any(dim=0).nonzero()  # [V, 1] valid column indices
    return int(columns.max().item()) + 1 if columns.numel() else 1


def _pad_tokens(tensor: Tensor, width: int) -> Tensor:
    """Zero-pad the token axis (dim 1) of [B, L] or [B, L, c] to `width`."""
    extra = width - tensor.shape[1]
    return F.pad(tensor, (0, 0, 0, extra) if tensor.ndim == 3 else (0, extra))  # [B, width(, c)]


def _center_span(low: float, high: float, cells: int, extent: float) -> tuple[int, int]:
    """Cells [a, b) of `cells` equal cells over [0, extent) whose centres lie in [low, high); the cell holding the
    centre of [low, high) when none does."""
    start = math.ceil(low * cells / extent - 0.5)
    stop = math.ceil(high * cells / extent - 0.5)
    start, stop = max(0, start), min(cells, stop)
    if stop <= start:
        start = min(cells - 1, max(0, math.floor((low + high) * 0.5 * cells / extent)))
        stop = start + 1
    return start, stop


class RegionalPrompt:
    """The global caption, regions (bottom to top), an optional background caption and the base ratio β.

    `context` [B, Lg, c] and `mask` [B, Lg] are the global caption; `canvas` is (width, height) in the units of
    the boxes (image pixels). After construction: `context` [B, Ltotal, c] and `mask` [B, Ltotal] (float 0/1) are
    the concatenated caption to feed the model, `spans` lists (name, start, stop) columns per part ('global',
    each region's name, 'background'), `global_length` = Lg after cutting padding. Raises ValueError naming the
    region and field for a box outside the canvas, an empty box, or a batch or width mismatch."""

    def __init__(self, context: Tensor, mask: Tensor | None, regions: Sequence[Region], canvas: tuple[int, int], *,
                 background: Tensor | None = None, background_mask: Tensor | None = None,
                 base_ratio: float = DEFAULT_BASE_RATIO):
        if not isinstance(context, Tensor) or context.ndim != 3 or context.shape[0] < 1 or context.shape[1] < 1:
            raise ValueError(f"regional prompt: global context must be a tensor [B, L, c], got "
                             f"{tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__}")
        try:
            width, height = (float(v) for v in canvas)
        except (TypeError, ValueError):
            raise ValueError(f"regional prompt: canvas must be (width, height), got {canvas!r}") from None
        if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
            raise ValueError(f"regional prompt: canvas (width, height) must be positive, got {canvas!r}")
        beta = float(base_ratio)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"regional prompt: base_ratio must lie in [0, 1], got {base_ratio}")
        self.batch, self.channels = context.shape[0], context.shape[2]
        self.canvas, self.base_ratio = (width, height), beta
        self.dtype, self.device = context.dtype, context.device
        parts = [("global", context, mask)]
        names, boxes = [], []
        for index, region in enumerate(regions):
            name = region.name or f"region {index}"
            boxes.append(self._check_box(name, region.box))
            names.append(name)
            parts.append((name, region.context, region.mask))
        if background is not None:
            parts.append(("background", background, background_mask))
        self.names, self.boxes, self.has_background = names, boxes, background is not None
        contexts, masks, self.spans, start = [], [], [], 0
        for name, part, part_mask in parts:
            part, part_mask = self._check_caption(name, part, part_mask)
            if name == "global" and not bool((part_mask != 0).any(dim=1).all()):
                raise ValueError("regional prompt: global mask has a row with no valid token; every row needs one")
            length = _valid_length(part_mask)
            contexts.append(part[:, :length])  # [B, l, c]
            masks.append(part_mask[:, :length])  # [B, l]
            self.spans.append((name, start, start + length))
            start += length
        self.global_length = self.spans[0][2]
        self.length = start
        self.context = torch.cat(contexts, dim=1)  # [B, Ltotal, c]
        self.mask = torch.cat(masks, dim=1)  # [B, Ltotal]
        self._columns: dict[tuple, Tensor] = {}

    def _check_box(self, name: str, box) -> tuple[float, float, float, float]:
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: box must be 4 numbers (x0, y0, x1, y1), got {box!r}") from None
        width, height = self.canvas
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ValueError(f"{name}: box {box!r} must be finite numbers")
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{name}: box {box!r} is empty; it needs x1 > x0 and y1 > y0")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(f"{name}: box {box!r} lies outside the canvas {width:g} x {height:g}; keep it within "
                             f"[0, {width:g}] x [0, {height:g}]")
        return x0, y0, x1, y1

    def _check_caption(self, name: str, part: Tensor, part_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Validate one caption; return it as [B, L, c] in the global dtype/device and its float mask [B, L]."""
        if not isinstance(part, Tensor) or part.ndim != 3 or part.shape[1] < 1:
            raise ValueError(f"{name}: context must be a tensor [B, L, c], got "
                             f"{tuple(part.shape) if isinstance(part, Tensor) else type(part).__name__}")
        if part.shape[0] not in (1, self.batch):
            raise ValueError(f"{name}: context batch {part.shape[0]} does not match the global batch {self.batch}; "
                             "pass 1 or the same batch")
        if part.shape[2] != self.channels:
            raise ValueError(f"{name}: context width {part.shape[2]} does not match the global caption's "
                             f"{self.channels} channels")
        length = part.shape[1]
        if part_mask is None:
            part_mask = torch.ones(part.shape[0], length)  # [b, L]
        if not isinstance(part_mask, Tensor) or part_mask.reshape(part_mask.shape[0], -1).shape[1] != length \
                or part_mask.shape[0] not in (1, part.shape[0]):
            raise ValueError(f"{name}: mask must be [B, {length}] for its context {tuple(part.shape)}, got "
                             f"{tuple(part_mask.shape) if isinstance(part_mask, Tensor) else type(part_mask).__name__}")
        part = part.to(self.device, self.dtype).expand(self.batch, -1, -1)  # [B, L, c]
        part_mask = part_mask.reshape(part_mask.shape[0], length).to(self.device)  # [b, L]
        return part, (part_mask != 0).float().expand(self.batch, -1)  # [B, L, c], [B, L]

    def token_boxes(self, grid_hw: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """Each region's box on a (h, w) token grid as (row0, col0, row1, col1), end-exclusive."""
        height, width = grid_hw
        out = []
        for x0, y0, x1, y1 in self.boxes:
            row0, row1 = _center_span(y0, y1, height, self.canvas[1])
            col0, col1 = _center_span(x0, x1, width, self.canvas[0])
            out.append((row0, col0, row1, col1))
        return out

    def owner_map(self, grid_hw: tuple[int, int]) -> Tensor:
        """[h, w] int64: index of the region each token belongs to (the last listed box wins), -1 outside all."""
        owner = torch.full(tuple(grid_hw), -1, dtype=torch.long)  # [h, w]
        for index, (row0, col0, row1, col1) in enumerate(self.token_boxes(grid_hw)):
            owner[row0:row1, col0:col1] = index
        return owner

    def column_mask(self, grid_hw: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
        """[N, Ltotal] bool (N = h*w, row-major): the caption columns each image token attends in the regional
        attention (validity of padding tokens not included). Cached per grid and device."""
        key = (tuple(grid_hw), str(device))
        cached = self._columns.get(key)
        if cached is None:
            owner = self.owner_map(grid_hw).reshape(-1)  # [N]
            allowed = torch.zeros(owner.numel(), self.length, dtype=torch.bool)  # [N, Ltotal]
            allowed[:, :self.global_length] = True
            for index, (_, start, stop) in enumerate(self.spans[1:1 + len(self.boxes)]):
                allowed[owner == index, start:stop] = True
            if self.has_background:
                _, start, stop = self.spans[-1]
                allowed[owner < 0, start:stop] = True
            cached = self._columns[key] = allowed.to(device)
        return cached

    def attention_mask(self, grid_hw: tuple[int, int]) -> Tensor:
        """[B, 1, N, Ltotal] bool SDPA mask of the regional attention for this prompt's own rows."""
        allowed = self.column_mask(grid_hw, self.device)  # [N, Ltotal]
        return allowed[None, None] & (self.mask != 0)[:, None, None, :]  # [B, 1, N, Ltotal]

    def model_inputs(self, negative: Tensor | None = None, negative_mask: Tensor | None = None
                     ) -> tuple[Tensor, Tensor, range]:
        """(context, context_mask, rows) for `model.forward` and `model.regional_prompting(self, rows=rows)`.

        Without `negative`: the concatenated caption, rows 0..B-1. With a negative caption [B or 1, Ln, c]
        (mask [B or 1, Ln]): the CFG batch [uncond; cond] of 2B rows, both parts padded (mask 0) to one width;
        rows B..2B-1 are regional, the unconditional rows see only their negative caption."""
        if negative is None:
            return self.context, self.mask, range(self.batch)
        negative, negative_mask = self._check_caption("negative", negative, negative_mask)
        length = _valid_length(negative_mask)
        negative, negative_mask = negative[:, :length], negative_mask[:, :length]  # [B, Ln, c], [B, Ln]
        width = max(length, self.length)
        context = torch.cat([_pad_tokens(negative, width), _pad_tokens(self.context, width)])  # [2B, W, c]
        mask = torch.cat([_pad_tokens(negative_mask, width), _pad_tokens(self.mask, width)])  # [2B, W]
        return context, mask, range(self.batch, 2 * self.batch)


@dataclass
class CallMasks:
    """The masks of one forward, built at its first cross-attention and shared by all its blocks."""

    rows: Tensor | None  # [R] regional batch rows; None when every row is regional
    global_length: int  # Lg: the global caption's columns
    keep_global: Tensor  # [R, 1, 1, Lg] bool: the base branch
    keep_regional: Tensor  # [R, 1, N, L] bool: the regional branch
    plain_rows: Tensor | None = None  # [P] rows attending plainly (CFG unconditional)
    plain_length: int = 0  # Lp: columns valid in any plain row
    keep_plain: Tensor | None = None  # [P, 1, 1, Lp] bool, None when all valid


class RegionalPrompting:
    """Context manager: every cross-attention of `model` (and of ControlNets passed to its forward) attends
    regionally for the batch `rows` (None: all rows) while inside. Outside it the modules carry no state."""

    def __init__(self, model, regional: RegionalPrompt, rows: Sequence[int] | None = None):
        if not isinstance(regional, RegionalPrompt):
            raise ValueError(f"regional_prompting: expected a RegionalPrompt, got {type(regional).__name__}")
        rows = None if rows is None else sorted({int(row) for row in rows})
        if rows is not None and (not rows or rows[0] < 0):
            raise ValueError(f"regional_prompting: rows must be non-negative batch indices, got {rows}")
        self.model, self.regional, self.rows = model, regional, rows
        self.plain = regional.length == regional.global_length  # no region or background columns
        self._signature = inspect.signature(model.forward)
        self._modules: list = []
        self._hooks: list = []
        self._grid: tuple[int, int] | None = None
        self._call: CallMasks | None = None

    def __enter__(self) -> "RegionalPrompting":
        modules = [block.cross_attn for block in self.model.blocks]
        if any(module.regional is not None for module in modules):
            raise RuntimeError("regional_prompting: this model is already prompting regionally; leave that block first")
        self._attach(modules)
        self._hooks = [self.model.register_forward_pre_hook(self._begin_call, with_kwargs=True)]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        for module in self._modules:
            module.regional = None
        self._hooks, self._modules, self._call, self._grid = [], [], None, None

    def _attach(self, modules) -> None:
        for module in modules:
            if module.regional is None:
                module.regional = self
                self._modules.append(module)

    def _begin_call(self, model, args: tuple, kwargs: dict) -> None:
        bound = self._signature.bind(*args, **kwargs)
        x, context = bound.arguments["x"], bound.arguments["context"]
        batch, p = x.shape[0], model.config.patch_size
        if context.shape[1] < self.regional.length:
            raise ValueError(f"regional_prompting: context has {context.shape[1]} tokens, the regional caption "
                             f"{self.regional.length}; pass the context from RegionalPrompt.model_inputs()")
        if self.rows is not None and self.rows[-1] >= batch:
            raise ValueError(f"regional_prompting: rows {self.rows} out of range for a batch of {batch}")
        for control in bound.arguments.get("controls") or ():
            self._attach([m for m in control[0].modules() if isinstance(m, CrossAttention)])
        self._grid, self._call = (x.shape[-2] // p, x.shape[-1] // p), None

    def _prepare(self, batch: int, tokens: int, length: int, keep: Tensor | None, device) -> CallMasks:
        """The masks of this forward from the caption validity `keep` [B, 1, 1, L] (None: all valid)."""
        if self._grid is None or self._grid[0] * self._grid[1] != tokens:
            raise RuntimeError("regional_prompting: a cross-attention ran outside a forward of the model; call the "
                               "model itself, not its blocks")
        rows = list(range(batch)) if self.rows is None else self.rows
        plain = sorted(set(range(batch)) - set(rows))
        allowed = self.regional.column_mask(self._grid, device)[:, :length]  # [N, L]
        if length > allowed.shape[1]:
            allowed = F.pad(allowed, (0, length - allowed.shape[1]))  # [N, L]; extra columns unseen
        valid = torch.ones(batch, 1, 1, length, dtype=torch.bool, device=device) if keep is None else keep
        index = torch.tensor(rows, device=device)  # [R]
        keep_rows = valid.index_select(0, index)  # [R, 1, 1, L]
        global_length = min(self.regional.global_length, length)
        call = CallMasks(rows=None if len(rows) == batch else index, global_length=global_length,
                         keep_global=keep_rows[..., :global_length],  # [R, 1, 1, Lg]
                         keep_regional=keep_rows & allowed[None, None])  # [R, 1, N, L]
        if plain:
            call.plain_rows = torch.tensor(plain, device=device)  # [P]
            keep_plain = valid.index_select(0, call.plain_rows)  # [P, 1, 1, L]
            call.plain_length = _valid_length(keep_plain.reshape(len(plain), length))
            call.keep_plain = None if keep is None else keep_plain[..., :call.plain_length]  # [P, 1, 1, Lp]
        return call

    def attend(self, module, q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None) -> Tensor:
        """Head outputs [B, H, N, d] for q [B, H, N, d], k/v [B, H, L, d] over the concatenated caption."""
        if self.plain:  # no regional columns: exactly the plain cross-attention
            if module.recorder is not None:
                module.recorder.record(q, k, keep)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # [B, H, N, d]
        batch, _, tokens, _ = q.shape
        if self._call is None:
            self._call = self._prepare(batch, tokens, k.shape[2], keep, q.device)
        call = self._call
        if module.recorder is not None:
            self._record(module.recorder, q, k, keep, call)
        rows = call.rows
        q_r, k_r, v_r = (q, k, v) if rows is None else (t.index_select(0, rows) for t in (q, k, v))
        beta, lg = self.regional.base_ratio, call.global_length
        out = None
        if beta < 1.0:
            out = F.scaled_dot_product_attention(q_r, k_r, v_r, attn_mask=call.keep_regional)  # [R, H, N, d]
        if beta > 0.0:
            base = F.scaled_dot_product_attention(q_r, k_r[:, :, :lg], v_r[:, :, :lg],
                                                  attn_mask=call.keep_global)  # [R, H, N, d]
            out = base if out is None else torch.lerp(out, base, beta)  # [R, H, N, d]
        if rows is None:
            return out
        plain, lp = call.plain_rows, call.plain_length
        q_p, k_p, v_p = (t.index_select(0, plain) for t in (q, k[:, :, :lp], v[:, :, :lp]))  # [P, H, *, d]
        full = torch.empty_like(q)  # [B, H, N, d]
        full.index_copy_(0, plain, F.scaled_dot_product_attention(q_p, k_p, v_p, attn_mask=call.keep_plain))
        return full.index_copy_(0, rows, out)  # [B, H, N, d]

    def _record(self, recorder, q: Tensor, k: Tensor, keep: Tensor | None, call: CallMasks) -> None:
        """Add the blended probabilities β·softmax(global) + (1−β)·softmax(regional) over the concatenated
        columns, summed over heads, to the capture's running sum (plain rows: their softmax)."""
        if recorder.total is None:
            raise RuntimeError("capture_attention: a block recorded outside a forward of the captured model")
        batch, heads, tokens, head_dim = q.shape
        length = k.shape[2]
        if recorder.total.shape[0] != batch or recorder.total.shape[1] != tokens or recorder.total.shape[2] < length:
            raise ValueError(f"capture_attention: block attention of shape q {tuple(q.shape)}, k {tuple(k.shape)} "
                             f"does not fit the capture {tuple(recorder.total.shape)}")
        device = q.device
        valid = torch.ones(batch, 1, 1, length, dtype=torch.bool, device=device) if keep is None else keep
        rows = torch.arange(batch, device=device) if call.rows is None else call.rows  # [R]
        mask_global = valid.clone()  # [B, 1, 1, L]
        mask_global[rows, :, :, call.global_length:] = False
        mask_regional = valid.expand(batch, 1, tokens, length).clone()  # [B, 1, N, L]
        mask_regional[rows] = call.keep_regional
        weight = torch.ones(batch, 1, 1, 1, device=device)  # [B, 1, 1, 1]: β for regional rows, 1 for plain
        weight[rows] = self.regional.base_ratio
        with torch.no_grad():
            keys = k.detach().float().transpose(-1, -2) * head_dim ** -0.5  # [B, H, d, L]
            step = max(1, capture.CHUNK_ELEMENTS // max(1, 3 * batch * heads * length))
            for start in range(0, tokens, step):
                stop = min(tokens, start + step)
                logits = q[:, :, start:stop].detach().float() @ keys  # [B, H, n, L]
                base = torch.softmax(logits.masked_fill(~mask_global, float("-inf")), dim=-1)  # [B, H, n, L]
                regional = torch.softmax(logits.masked_fill_(~mask_regional[:, :, start:stop], float("-inf")), dim=-1)
                probs = torch.lerp(regional, base, weight)  # [B, H, n, L]
                recorder.total[:, start:stop, :length].add_(probs.sum(dim=1))  # [B, n, L]
        recorder.weight += heads
