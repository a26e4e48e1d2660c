"""Classifier-free guidance around a PixArt transformer, producing the `eps_fn(x, t)` the samplers drive.

eps = eps_uncond + s * (eps_cond - eps_uncond) (Ho & Salimans 2022, arXiv:2207.12598). Cond and uncond run in
ONE batch ordered [uncond, cond] as diffusers' PixArt pipelines (and the official DPM-Solver wrapper, PixArt-alpha
`diffusion/model/dpm_solver.py`) do, each with its own T5 mask. Learned-sigma models (out_channels =
2 * in_channels) have the variance channels dropped. Micro-conditions (resolution, aspect ratio of α-1024-MS)
are left to the model, which derives them from the latent's size.

`prediction="v_prediction"` is for community fine-tunes trained on v (Salimans & Ho 2022, arXiv:2202.00512): with
x_vp = sqrt(a) x0 + sqrt(1 - a) eps and v = sqrt(a) eps - sqrt(1 - a) x0, eps = sqrt(a) v + sqrt(1 - a) x_vp,
where a = alpha_bar at the (possibly fractional) timestep, consistent with the sampler's sigma.

ControlNets (PixArt-δ, arXiv:2401.05252) enter as `ScheduledControl` items: each is passed to the model's
`controls=` only at the timesteps of its start/end window, with one control latent shared by the uncond and
cond halves of the CFG batch (as the official DPM-Solver path, PixArt-alpha `diffusion/model/nets/pixart_controlnet.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .schedule import linear_schedule

PREDICTIONS = ("epsilon", "v_prediction")
LAST_TIMESTEP = 999  # DDPM timesteps run 999 (pure noise) .. 0


@dataclass(frozen=True, eq=False)
class ScheduledControl:
    """One ControlNet with its control latent, strength and denoising window.

    latent: [1 or B, 4, H, W] in the model's scaled latent space (VAE latent * scaling factor), H, W as the
    latents being sampled. start_percent / end_percent: the window as core ComfyUI's "Apply ControlNet
    (Advanced)" (`percent_to_sigma`): 0 is the first, noisiest step, 1 the end of sampling; the control is active
    at DDPM timestep t when (1 - end_percent) * 999 <= t <= (1 - start_percent) * 999.
    """

    controlnet: torch.nn.Module
    latent: torch.Tensor
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise ValueError(f"control start_percent {self.start_percent} and end_percent {self.end_percent} must "
                             "satisfy 0 <= start_percent <= end_percent <= 1")
        if not isinstance(self.latent, torch.Tensor) or self.latent.ndim != 4:
            shape = tuple(self.latent.shape) if isinstance(self.latent, torch.Tensor) else type(self.latent).__name__
            raise ValueError(f"control latent must be a tensor [1 or B, C, H, W], got {shape}")

    def active_at(self, timestep: float) -> bool:
        """True when this control applies at DDPM `timestep` (never at strength 0)."""
        low = (1.0 - self.end_percent) * LAST_TIMESTEP
        high = (1.0 - self.start_percent) * LAST_TIMESTEP
        return self.strength != 0 and low <= timestep <= high


def _model_dtype(model) -> torch.dtype | None:
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return parameter.dtype
    return getattr(model, "dtype", None)


def _ones_mask(context: torch.Tensor) -> torch.Tensor:
    return torch.ones(context.shape[:2], dtype=torch.long, device=context.device)  # [B, L]


def _pad_tokens(context: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad context [B, L, C] and mask [B, L] to `length` tokens (padded tokens are masked out)."""
    mask = mask.long() if mask.dtype == torch.bool else mask  # [B, L]
    extra = length - context.shape[1]
    if extra == 0:
        return context, mask
    return F.pad(context, (0, 0, 0, extra)), F.pad(mask, (0, extra))  # [B, length, C], [B, length]


def _per_sample(value: torch.Tensor | None, batch: int, name: str) -> torch.Tensor | None:
    """Broadcast a batch-1 tensor to `batch` rows; reject other mismatches."""
    if value is None or value.shape[0] == batch:
        return value
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    raise ValueError(f"{name} has batch size {value.shape[0]} but the latents have {batch}; use 1 or {batch}")


def _control_latent(control: ScheduledControl, x: torch.Tensor, copies: int, dtype: torch.dtype) -> torch.Tensor:
    """The control latent for the model batch: per-sample rows of x [B, C, H, W], repeated for each CFG half."""
    latent = control.latent
    if tuple(latent.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(f"control latent has shape {tuple(latent.shape[1:])} per sample but the latents being "
                         f"sampled have {tuple(x.shape[1:])}; encode the control image at the generation size")
    latent = _per_sample(latent.to(device=x.device, dtype=dtype), x.shape[0], "control latent")  # [B, C, H, W]
    return latent.repeat(copies, 1, 1, 1) if copies > 1 else latent  # [nB, C, H, W] as [uncond; cond]


def cfg_eps_fn(model, context: torch.Tensor, context_mask: torch.Tensor | None, neg_context: torch.Tensor | None,
               neg_mask: torch.Tensor | None, guidance_scale: float, prediction: str = "epsilon",
               controls: Sequence[ScheduledControl] = ()) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """An `eps_fn(x [B,C,H,W], t [B]) -> eps [B,C,H,W]` calling `model(x, t, context, context_mask=...)`.

    context / neg_context: T5 states [1 or B, L, 4096]; masks [1 or B, L] (None = all tokens valid). The
    shorter of the two is zero-padded (and masked) to the longer. guidance_scale <= 1 runs the positive prompt
    only (no negative needed), as diffusers' `do_classifier_free_guidance`. prediction: "epsilon" or
    "v_prediction" (what the model outputs). controls: ControlNets passed to `model(..., controls=[(controlnet,
    latent, strength), ...])` at the steps of their window (the batch shares one timestep); where none is active
    (or all have strength 0) the model is called exactly as without controls.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    use_cfg = guidance_scale > 1.0
    if use_cfg and neg_context is None:
        raise ValueError(f"guidance_scale {guidance_scale} > 1 needs a negative context (e.g. T5 of the empty prompt)")
    schedule = linear_schedule()
    model_dtype = _model_dtype(model)
    controls = tuple(controls)
    context_mask = _ones_mask(context) if context_mask is None else context_mask
    if use_cfg:
        neg_mask = _ones_mask(neg_context) if neg_mask is None else neg_mask
        length = max(context.shape[1], neg_context.shape[1])
        context, context_mask = _pad_tokens(context, context_mask, length)
        neg_context, neg_mask = _pad_tokens(neg_context, neg_mask, length)

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[0], x.shape[1]
        dtype = model_dtype or x.dtype
        cond = _per_sample(context, batch, "context")  # [B, L, C]
        cond_mask = _per_sample(context_mask, batch, "context_mask")  # [B, L]
        if use_cfg:
            uncond = _per_sample(neg_context, batch, "neg_context")  # [B, L, C]
            uncond_mask = _per_sample(neg_mask, batch, "neg_mask")  # [B, L]
            x_in = torch.cat([x, x])  # [2B, C, H, W]
            t_in = torch.cat([t, t])  # [2B]
            ctx_in = torch.cat([uncond, cond])  # [2B, L, C]
            mask_in = torch.cat([uncond_mask, cond_mask])  # [2B, L]
        else:
            x_in, t_in, ctx_in, mask_in = x, t, cond, cond_mask
        active = [c for c in controls if c.active_at(float(t.reshape(-1)[0]))]
        extra = {"controls": [(c.controlnet, _control_latent(c, x, 2 if use_cfg else 1, dtype), c.strength)
                              for c in active]} if active else {}
        out = model(x_in.to(dtype), t_in, ctx_in.to(device=x.device, dtype=dtype),
                    context_mask=mask_in.to(x.device), **extra)  # [nB, C or 2C, H, W]
        if out.shape[1] == 2 * channels:
            out = out[:, :channels]  # [nB, C, H, W] learned-sigma channels dropped
        elif out.shape[1] != channels:
            raise ValueError(f"model returned {out.shape[1]} channels for {channels}-channel latents")
        out = out.to(x.dtype)
        if use_cfg:
            out_uncond, out_cond = out.chunk(2)  # [B, C, H, W] each
            out = out_uncond + guidance_scale * (out_cond - out_uncond)  # [B, C, H, W]
        if prediction == "v_prediction":
            alpha_bar = torch.as_tensor(schedule.alpha_bar_at(t.double().cpu().numpy()), dtype=x.dtype)  # [B]
            alpha_bar = alpha_bar.to(x.device).view(-1, 1, 1, 1)  # [B, 1, 1, 1]
            out = alpha_bar.sqrt() * out + (1.0 - alpha_bar).sqrt() * x  # [B, C, H, W] eps from v
        return out

    return eps_fn
