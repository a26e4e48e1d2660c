"""The custom socket types of PixArt Atelier and the small objects that travel through them.

Core types are reused only where the object honours the whole core contract: LATENT (unscaled latents),
IMAGE, VAE (a real `comfy.sd.VAE` inside ComfyUI). A PixArt DiT is not a core `MODEL` (core samplers
cannot drive its text masks and micro-conditions), so it travels as PIXART_MODEL; likewise T5 and its
masked conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PIXART_MODEL = "PIXART_MODEL"
PIXART_T5 = "PIXART_T5"
PIXART_CONDITIONING = "PIXART_CONDITIONING"
PIXART_CONTROLNET = "PIXART_CONTROLNET"
PIXART_ATTENTION = "PIXART_ATTENTION"  # where a subject is: nodes/transparency.py SubjectAttention

CATEGORY = "PixArt Atelier"


@dataclass
class PixArtModel:
    """A loaded PixArt transformer: the host handle that places it on the device, and what was detected."""

    handle: object
    config: object  # pixart_core.pixart.config.PixArtConfig
    summary: str

    @property
    def latent_space(self) -> str:
        return self.config.latent_space

    @property
    def max_length(self) -> int:
        return self.config.model_max_length


@dataclass
class PixArtT5:
    """What travels through a PIXART_T5 socket: a loaded T5 encoder's host handle, its tokenizer and file name."""

    handle: object
    tokenizer: object
    name: str


@dataclass
class PixArtControlNet:
    """What travels through a PIXART_CONTROLNET socket: a loaded PixArt-δ ControlNet's host handle and summary."""

    handle: object
    summary: str


@dataclass(frozen=True, eq=False)
class ControlHint:
    """One ControlNet applied to a conditioning: the control image (IMAGE [B, H, W, C] in 0..1, on the CPU), the
    VAE that encodes it at the generation size when sampling, the strength and the start/end percent window."""

    controlnet: PixArtControlNet
    image: torch.Tensor
    vae: object
    strength: float
    start_percent: float
    end_percent: float


@dataclass
class PixArtConditioning:
    """T5 hidden states [N, L, C] and mask [N, L] for one prompt (N = 1) or a batch, on the CPU, and the
    ControlNets applied to it (Apply ControlNet returns a new conditioning; objects are never changed)."""

    hidden: torch.Tensor
    mask: torch.Tensor
    prompts: list[str] = field(default_factory=list)
    controls: tuple[ControlHint, ...] = ()

    def repeat_to(self, batch: int, name: str = "conditioning") -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [batch, L, C] and mask [batch, L]; `name` (the input) is named in the error."""
        n = self.hidden.shape[0]
        if n == 0 or batch % n:
            raise ValueError(f"{name}: a conditioning of {n} prompts cannot fill a batch of {batch} "
                             f"(the batch must be a multiple of {n}); match the prompt counts")
        return self.hidden.repeat_interleave(batch // n, 0), self.mask.repeat_interleave(batch // n, 0)


def check_latent(samples: torch.Tensor, name: str, video: bool = False) -> None:
    """Refuse a latent that is not [B >= 1, C, h, w] (video=True: or [B, C, T, h, w]) of finite values, naming
    the input."""
    if samples.ndim != 4 and not (video and samples.ndim == 5):
        raise ValueError(f"{name}: expected latents [B, C, H/8, W/8], got shape {tuple(samples.shape)}; "
                         "connect an image latent (video latents are not supported)")
    if samples.shape[0] == 0:
        raise ValueError(f"{name}: the latent batch is empty (shape {tuple(samples.shape)}); "
                         "connect a non-empty latent")
    if not torch.isfinite(samples).all():
        raise ValueError(f"{name}: the latent holds NaN or infinite values; regenerate or re-encode it")


def check_image(image: torch.Tensor, name: str) -> None:
    """Refuse an IMAGE that is not [B >= 1, H, W, C] of finite values, naming the input."""
    if image.ndim != 4 or image.shape[0] == 0:
        raise ValueError(f"{name}: expected images [B >= 1, H, W, C], got shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError(f"{name}: the image holds NaN or infinite values; fix the node that made it")
