"""A pixart_core `LayerBackend` (pixart_core/layers/backend.py) built from the nodes' MODEL, T5 and VAE inputs.

Everything host-side goes through `host`: the DiT is placed by ComfyUI's model management, prompts are encoded
on T5's device as PixArt T5 Text Encode does (`text.encode`), images go through the core VAE the workflow
connects (`comfy.sd.VAE` in ComfyUI, `PlainVAE` outside), and the engine's per-step callbacks drive the node's
progress bar, latent previews and Cancel. After each T5 or VAE call the DiT is loaded again, because ComfyUI may
have offloaded it to make room (a no-op when it stayed resident).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from . import host
from .text import encode as encode_conditioning

log = logging.getLogger(__name__)


class StepReporter:
    """The engine's `on_progress` / `on_preview` / `should_stop` callbacks on one node: a progress bar per phase
    (the bar restarts when the engine starts a new phase, e.g. the next layer) carrying the latent previews.

    One progress update per step: with previews on, a step's progress waits for its preview (the engine reports
    progress, then the preview) and goes out with it; a preview that comes first waits for its progress. `close`
    sends what is still waiting.
    """

    def __init__(self, latent_space: str, label: str = "layers"):
        self.label = label
        self.previewer = host.preview_callback(latent_space)  # None outside ComfyUI or with previews off
        self.phases: list[str] = []  # phase names in the order they started, for the log and tests
        self._bar: Any = None
        self._bar_key: tuple[str, int] | None = None
        self._waiting: tuple[str, int, int] | None = None  # a step's progress waiting for its preview
        self._early: tuple[str, int, Any] | None = None  # a preview waiting for its step's progress

    def _update(self, phase: str, step: int, total: int, image: Any = None) -> None:
        if self._bar_key != (phase, total):
            self._bar, self._bar_key = host.progress(total), (phase, total)
            self.phases.append(phase)
            log.info("PixArt Atelier: %s: %s (%d steps)", self.label, phase, total)
        self._bar.update(step, image)

    def close(self) -> None:
        if self._waiting is not None:
            self._update(*self._waiting)
        self._waiting = self._early = None

    def on_progress(self, phase: str, step: int, total: int) -> None:
        early = self._early if self._early is not None and self._early[:2] == (phase, step) else None
        self.close()  # a previous step still waiting goes out without its preview
        if early is not None:
            self._update(phase, step, total, early[2])
        elif self.previewer is None:
            self._update(phase, step, total)
        else:
            self._waiting = (phase, step, total)

    def on_preview(self, phase: str, step: int, total: int, denoised: torch.Tensor) -> None:
        if self.previewer is None:
            return
        image = self.previewer(step, total, None, denoised)  # denoised [B, 4, h, w] scaled: sample 0 shown
        if self._waiting is not None and self._waiting[:2] == (phase, step):
            self._waiting = None
            self._update(phase, step, total, image)
        else:
            self._early = (phase, step, image)

    @staticmethod
    def should_stop() -> bool:
        return host.should_stop()


def _module_of(handle) -> torch.nn.Module:
    return host.load_on_device(handle)


def _text_encoder(model, t5) -> Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]:
    def encode_text(prompts) -> tuple[torch.Tensor, torch.Tensor]:
        conditioning = encode_conditioning(t5, list(prompts), model.max_length)  # hidden [B, L, C], mask [B, L] CPU
        param = next(_module_of(model.handle).parameters())  # the DiT back on its device
        return conditioning.hidden.to(param.device, param.dtype), conditioning.mask.to(param.device)

    return encode_text


def _image_encoder(model, vae) -> Callable[[torch.Tensor], torch.Tensor]:
    def encode_image(pixels: torch.Tensor) -> torch.Tensor:
        images = ((pixels.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)  # [B, H, W, 3] 0..1
        latent = vae.encode(images.contiguous()).float()  # [B, 4, H/8, W/8] unscaled
        if latent.ndim != 4 or latent.shape[1] != model.config.in_channels:
            raise ValueError(f"vae: encoded to shape {tuple(latent.shape)}, not [B, {model.config.in_channels}, "
                             f"H/8, W/8]; connect the VAE of the model's latent space (SDXL VAE for PixArt-Σ)")
        _module_of(model.handle)
        return latent.to(pixels.device)  # [B, 4, H/8, W/8]

    return encode_image


def _latent_decoder(model, vae) -> Callable[[torch.Tensor], torch.Tensor]:
    def decode_latent(latent: torch.Tensor) -> torch.Tensor:
        images = vae.decode(latent.detach().float().cpu())  # [B, 8h, 8w, 3] in 0..1 (core VAEs clamp)
        if images.ndim == 5:  # a video VAE: [B, T, H, W, C]
            images = images.reshape(-1, *images.shape[-3:])
        _module_of(model.handle)
        pixels = images[..., :3].float().movedim(-1, 1) * 2.0 - 1.0  # [B, 3, 8h, 8w] in -1..1
        return pixels.contiguous().to(latent.device)

    return decode_latent


def build_backend(model, t5, vae, reporter: StepReporter | None = None):
    """A LayerBackend for PixArt model `model` (PixArtModel), `t5` (PixArtT5) and core VAE `vae`; the DiT is
    loaded on ComfyUI's device here. `reporter` (default: a new StepReporter) receives the engine's steps."""
    from ..pixart_core.layers.backend import LayerBackend

    reporter = reporter or StepReporter(model.latent_space)
    module = _module_of(model.handle)
    return LayerBackend(
        model=module,
        encode_text=_text_encoder(model, t5),
        tokenizer=t5.tokenizer,
        encode_image=_image_encoder(model, vae),
        decode_latent=_latent_decoder(model, vae),
        scaling_factor=float(model.config.vae_scale_factor),
        max_length=int(model.max_length),
        on_progress=reporter.on_progress,
        on_preview=reporter.on_preview,
        should_stop=reporter.should_stop,
    )
