"""What the layer engine needs from a loaded model, whoever loaded it (`PixArtPipeline.layer_backend()` or the
ComfyUI nodes): the DiT, text and VAE functions, and optional progress, preview and stop callbacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class LayerBackend:
    """What the layer engine needs from a loaded model, whoever loaded it (PixArtPipeline or the ComfyUI nodes)."""

    model: torch.nn.Module  # PixArtTransformer, already on its compute device and dtype
    encode_text: Callable[[Sequence[str]], tuple[Tensor, Tensor]]  # prompts -> hidden [B, L, C], mask [B, L]
    tokenizer: Any  # the T5 tokenizer (token positions of a layer's words)
    encode_image: Callable[[Tensor], Tensor]  # pixels [B, 3, H, W] in -1..1 -> UNSCALED latent [B, 4, H/8, W/8]
    decode_latent: Callable[[Tensor], Tensor]  # UNSCALED latent [B, 4, h, w] -> pixels [B, 3, 8h, 8w], about -1..1
    scaling_factor: float  # VAE scaling factor (model latents = unscaled * scaling_factor)
    max_length: int  # caption tokens (α 120, Σ 300, or the model's config)
    on_progress: Callable[[str, int, int], None] | None = None  # (phase, step done 1..total, total) per step
    on_preview: Callable[[str, int, int, Tensor], None] | None = None  # (phase, step, total, denoised [B,4,h,w])
    should_stop: Callable[[], bool] | None = None  # True -> stop between steps (SamplingInterrupted)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def patch_pixels(self) -> int:
        """Pixels per DiT token side: 8 (VAE) x the patch size."""
        return 8 * int(self.model.config.patch_size)

    def encode_pixels(self, pixels: Tensor) -> Tensor:
        """pixels [B, 3, H, W] in 0..1 -> SCALED model latent [B, 4, H/8, W/8] on the model's device (float32)."""
        latent = self.encode_image(pixels * 2.0 - 1.0)  # [B, 4, h, w] unscaled
        return latent.to(self.device, torch.float32) * self.scaling_factor  # [B, 4, h, w]

    def decode_pixels(self, latent: Tensor) -> Tensor:
        """SCALED model latent [B, 4, h, w] -> pixels [B, 3, 8h, 8w] in 0..1, float32 on the CPU."""
        pixels = self.decode_latent(latent / self.scaling_factor)  # [B, 3, H, W] about -1..1
        return (pixels.float().cpu() / 2.0 + 0.5).clamp(0.0, 1.0)  # [B, 3, H, W]
