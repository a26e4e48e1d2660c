"""The shapes world's optimisation loop: AdamW with warm-up and cosine decay, gradient clipping and an EMA."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

log = logging.getLogger("pixart_core.testing.shapes_training")


def lr_at(step: int, plan_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up to `plan_lr`, then a cosine down to a tenth of it at `total`."""
    if step < warmup:
        return plan_lr * (step + 1) / warmup
    done = (step - warmup) / max(1, total - warmup)
    return plan_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * done)))


def progress(phase: str, step: int, total: int, loss: float, started: float) -> None:
    """Log about twenty times per phase, and the last step."""
    if step == total - 1 or step % max(1, total // 20) == 0:
        log.info("%s step %d/%d loss %.4f (%.0f s)", phase, step + 1, total, loss, time.perf_counter() - started)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group at `lr`."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """Exponential moving average of a module's parameters (warm-started: decay min(d, (1+n)/(10+n)))."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.shadow = copy.deepcopy(module).requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema, live in zip(self.shadow.parameters(), module.parameters()):
            ema.lerp_(live.detach(), 1.0 - decay)


def optimise(phase: str, module: torch.nn.Module, steps: int, lr: float, warmup: int, ema_decay: float,
              loss_at: Callable[[int], Tensor], snapshot: Callable[[int, torch.nn.Module], None] | None = None
              ) -> torch.nn.Module:
    """AdamW with warm-up and cosine decay, gradient clipping at 1 and an EMA; returns the EMA copy."""
    ema = EMA(module, ema_decay)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    started = time.perf_counter()
    for step in range(steps):
        loss = loss_at(step)
        set_lr(optimizer, lr_at(step, lr, warmup, steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        ema.update(module)
        progress(phase, step, steps, loss.item(), started)
        if snapshot is not None and (step + 1) % 500 == 0:
            snapshot(step + 1, ema.shadow)
    return ema.shadow.eval()
