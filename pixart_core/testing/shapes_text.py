"""The shapes world's text encoder: the tiny T5 taught to parse the world's prompts before the DiT trains.

A random T5 gives each word its own vector but leaves it blind to its neighbours, so to the DiT a prompt is a bag
of words: nothing binds "red" to "circle" or to "left" (measured: colour features differ only at the colour
word's own position). Learning that binding through the diffusion loss alone is slow. So the T5 first learns to
read its prompts: every token of a shape's phrase ("a red circle on the left") predicts that phrase's colour,
shape and place, and every token of the background phrase predicts the background, through linear heads that
are dropped afterwards. What stays is an ordinary T5 encoder in the released layout whose features carry the
binding, so a DiT image token at a place can find its phrase with one cross-attention lookup. `Captions` holds
the training prompts as token ids, or once the T5 is frozen, as its features.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .shapes_data import BACKGROUNDS, COLOURS, PLACES, SHAPES, ShapeSpec, describe, prompt_for
from ..t5.model import T5Encoder

log = logging.getLogger(__name__)

IGNORE = -100  # cross-entropy's ignore_index: padding, separators, and attributes a phrase does not name
CAPTION_TOKENS = 48  # longest world prompt is ~36 T5 tokens; padding is masked, so any length gives the same result
ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "place": list(PLACES), "background": list(BACKGROUNDS)}


def phrase_spans(tokenizer, background: str, specs: list[ShapeSpec]) -> list[tuple[int, int]]:
    """Token spans [first, last) in `prompt_for(background, specs)` (lower-cased) of each shape's phrase, in
    `specs` order, then of the background phrase (the whole prompt of a shape-free scene).

    Spans come from token counts of the prompt's prefixes; the prompt joins phrases at word boundaries, where the
    tokenizer's pieces of a prefix are a prefix of the prompt's pieces.
    """
    prompt = prompt_for(background, specs).lower()

    def tokens_before(end: int) -> int:
        return len(tokenizer.encode(prompt[:end])) - 1  # without </s>

    spans, cursor = [], 0
    for spec in specs:
        start = prompt.index(describe(spec).lower(), cursor)
        cursor = start + len(describe(spec))
        spans.append((tokens_before(start), tokens_before(cursor)))
    start = prompt.rindex(", ") + 2 if specs else 0  # the background phrase ends the prompt (or is all of it)
    spans.append((tokens_before(start), tokens_before(len(prompt))))
    return spans


def phrase_targets(tokenizer, background: str, specs: list[ShapeSpec], length: int) -> np.ndarray:
    """int64 [length, 4]: per token of `prompt_for(background, specs)` (lower-cased), the class of its phrase's
    colour, shape, place and background (ATTRIBUTES order), IGNORE where the token's phrase does not name it."""
    targets = np.full((length, 4), IGNORE, np.int64)
    *shape_spans, (first, last) = phrase_spans(tokenizer, background, specs)
    for spec, (start, stop) in zip(specs, shape_spans):
        targets[start:stop, 0] = ATTRIBUTES["colour"].index(spec.colour)
        targets[start:stop, 1] = ATTRIBUTES["shape"].index(spec.shape)
        targets[start:stop, 2] = ATTRIBUTES["place"].index(spec.place)
    targets[first:last, 3] = ATTRIBUTES["background"].index(background)
    return targets


class PromptParser(torch.nn.Module):
    """Linear heads over T5 features [B, L, D] -> logits per attribute (trained, then discarded)."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, len(v)) for v in ATTRIBUTES.values())

    def loss(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Summed cross-entropy and per-attribute token accuracy [4] of features [B, L, D] vs targets [B, L, 4]."""
        losses, accuracy = [], []
        for index, head in enumerate(self.heads):
            logits = head(features)  # [B, L, classes]
            wanted = targets[..., index]  # [B, L]
            losses.append(F.cross_entropy(logits.flatten(0, 1), wanted.flatten(), ignore_index=IGNORE))
            named = wanted != IGNORE
            accuracy.append((logits.argmax(-1)[named] == wanted[named]).float().mean())
        return torch.stack(losses).sum(), torch.stack(accuracy)


def pretrain_t5(t5, ids: Tensor, mask: Tensor, targets: Tensor, steps: int, batch: int, lr: float,
                generator: torch.Generator):
    """Teach `t5` (in place) to parse the prompts: ids/mask [N, L], targets [N, L, 4]. Returns the final
    per-attribute accuracy [4] on the last batch."""
    parser = PromptParser(t5.config.d_model)
    t5.requires_grad_(True).train()
    params = list(t5.parameters()) + list(parser.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    started = time.perf_counter()
    accuracy = torch.zeros(4)
    for step in range(steps):
        index = torch.randint(0, ids.shape[0], (batch,), generator=generator)  # [b]
        features = t5(ids[index], mask[index])  # [b, L, D]
        loss, accuracy = parser.loss(features, targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step == steps - 1 or step % max(1, steps // 10) == 0:
            log.info("t5 parse step %d/%d loss %.4f accuracy %s (%.0f s)", step + 1, steps, loss.item(),
                     " ".join(f"{a:.3f}" for a in accuracy.tolist()), time.perf_counter() - started)
    t5.eval().requires_grad_(False)
    return accuracy.detach()


@dataclass
class Captions:
    """Per training prompt (lower-cased as pipelines do) its token ids [N, CAPTION_TOKENS], or after `features`
    its T5 features [N, CAPTION_TOKENS, C], and its mask; the empty prompt's row and mask stand in for
    classifier-free guidance's dropped rows."""

    rows: Tensor
    mask: Tensor
    empty_row: Tensor
    empty_mask: Tensor

    @classmethod
    def tokenize(cls, tokenizer, prompts: list[str]) -> "Captions":
        ids, mask = tokenizer([p.lower().strip() for p in prompts], max_length=CAPTION_TOKENS)  # [N, L] each
        empty_ids, empty_mask = tokenizer([""], max_length=CAPTION_TOKENS)  # [1, L] each
        return cls(ids, mask, empty_ids[0], empty_mask[0])

    def dropped(self, index: Tensor, rate: float, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Rows (ids [b, L] or features [b, L, C]), masks [b, L] and drop flags [b] of prompts `index`, each
        replaced by the empty prompt with probability `rate`."""
        drop = torch.rand(index.shape[0], generator=generator) < rate  # [b]
        shape = (-1,) + (1,) * (self.rows.dim() - 1)
        rows = torch.where(drop.view(shape), self.empty_row, self.rows[index])  # [b, L] or [b, L, C]
        return rows, torch.where(drop[:, None], self.empty_mask, self.mask[index]), drop

    @torch.no_grad()
    def features(self, t5: T5Encoder, batch: int = 256) -> "Captions":
        """The same captions as the frozen T5's masked features [N, L, C] (and the empty prompt's [L, C]), so
        `dropped` hands out contexts instead of token ids."""
        out = [t5(self.rows[i:i + batch], self.mask[i:i + batch]) * self.mask[i:i + batch, :, None]
               for i in range(0, self.rows.shape[0], batch)]
        empty = t5(self.empty_row[None], self.empty_mask[None])[0] * self.empty_mask[:, None]  # [L, C]
        return Captions(torch.cat(out), self.mask, empty, self.empty_mask)
