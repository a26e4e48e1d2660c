"""`TransparentDecoder`: LayerDiffuse's UNet1024 with input checks, padding to multiples of 64 and the 8-way
test-time augmentation (median over the dihedral transforms, as upstream `TransparentVAEDecoder.estimate_augmented`
in lllyasviel/sd-forge-layerdiffuse `lib_layerdiffusion/models.py`).

Inputs: `image` [B,3,H,W] in 0..1 is the ordinary VAE's decode of the same latent; `latent` [B,4,H/8,W/8] is that
latent in the space `latent_scale` names (see `transparent_load.py`: for every released file the raw, unscaled VAE
latent, i.e. the sampler's latent divided by the VAE scaling factor). Output channel 0 is alpha, channels 1..3 the
straight colour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .transparent_unet import TransparentUNet

_DIHEDRAL = tuple((flip, turns) for flip in (False, True) for turns in range(4))  # upstream order


def _forward_transform(x: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k=turns, dims=(2, 3)).contiguous()  # rot90 gives a strided view; convs want dense


def _inverse_transform(x: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    x = torch.rot90(x, k=-turns, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if flip else x


class TransparentDecoder(nn.Module):
    """A loaded LayerDiffuse transparent decoder. Attributes (set by the loader):

    `unet` the network (its state dict has the released key names); `family` the file family ("sdxl", "sd15",
    "sdxl-diffusers" or None when the file name says nothing); `latent_space` "sdxl" or "sd15" (None if
    unknown); `latent_scale` the factor applied to the raw VAE latent before it is passed (1.0 for all released
    files); `name` the file it came from.
    """

    def __init__(self, unet: TransparentUNet, *, family: str | None = None, latent_space: str | None = None,
                 latent_scale: float = 1.0, name: str = ""):
        super().__init__()
        self.unet = unet
        self.family = family
        self.latent_space = latent_space
        self.latent_scale = latent_scale
        self.name = name

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    def _check(self, image: torch.Tensor, latent: torch.Tensor) -> None:
        channels = self.unet.config.latent_channels
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W] in 0..1 (the ordinary VAE decode), got {tuple(image.shape)}")
        if latent.ndim != 4 or latent.shape[1] != channels:
            raise ValueError(f"latent must be [B, {channels}, H/8, W/8], got {tuple(latent.shape)}")
        if latent.shape[0] != image.shape[0]:
            raise ValueError(f"image and latent batch sizes differ ({image.shape[0]} vs {latent.shape[0]})")
        if (image.shape[2], image.shape[3]) != (latent.shape[2] * 8, latent.shape[3] * 8):
            raise ValueError(f"image size {tuple(image.shape[2:])} must be 8x the latent size "
                             f"{tuple(latent.shape[2:])}; pass the VAE decode of this latent")

    def _padded(self, image: torch.Tensor, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both inputs in the network's dtype/device, edge-padded (bottom/right) to multiples of 64 pixels."""
        self._check(image, latent)
        multiple = self.unet.config.total_downscale
        height, width = image.shape[2:]
        pad_h, pad_w = -height % multiple, -width % multiple
        image = image.to(self.device, self.dtype)  # [B, 3, H, W]
        latent = latent.to(self.device, self.dtype)  # [B, 4, H/8, W/8]
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")  # [B, 3, H', W']
            latent = F.pad(latent, (0, pad_w // 8, 0, pad_h // 8), mode="replicate")  # [B, 4, H'/8, W'/8]
        return image, latent

    def forward(self, image: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Raw network output [B,4,H,W] (alpha, colour; not clipped), in `image`'s dtype and device."""
        height, width = image.shape[2:]
        padded_image, padded_latent = self._padded(image, latent)
        out = self.unet(padded_image, padded_latent)[:, :, :height, :width]  # [B, 4, H, W]
        return out.to(image.device, image.dtype if image.is_floating_point() else torch.float32)

    @torch.no_grad()
    def estimate(self, image: torch.Tensor, latent: torch.Tensor, tta: bool = True) -> torch.Tensor:
        """[B,4,H,W] clipped to [0,1]; with `tta` the element-wise median (torch.median: the lower of the two middle
        values) over the 8 flips/rotations, each output clipped and transformed back before the median."""
        height, width = image.shape[2:]
        padded_image, padded_latent = self._padded(image, latent)
        if not tta:
            out = self.unet(padded_image, padded_latent).clamp(0, 1)  # [B, 4, H', W']
        else:
            outputs = []
            for flip, turns in _DIHEDRAL:
                y = self.unet(_forward_transform(padded_image, flip, turns),
                              _forward_transform(padded_latent, flip, turns)).clamp(0, 1)
                outputs.append(_inverse_transform(y, flip, turns))  # [B, 4, H', W']
            stacked = torch.stack(outputs)  # [8, B, 4, H', W']
            if stacked.device.type == "mps":  # torch.median crashes on Apple GPUs (ComfyUI-layerdiffuse models.py)
                stacked = stacked.cpu()
            out = torch.median(stacked, dim=0).values  # [B, 4, H', W']
        out = out[:, :, :height, :width]  # [B, 4, H, W]
        return out.to(image.device, image.dtype if image.is_floating_point() else torch.float32)
