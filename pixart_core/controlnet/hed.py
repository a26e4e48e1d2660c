"""HED soft edges with the `ControlNetHED_Apache2` network that PixArt-δ's ControlNet was trained on.

HED (holistically-nested edge detection, Xie & Tu, arXiv:1504.06375) taps a VGG trunk after each of its five
stages with a 1x1 "side output" and fuses them. lllyasviel's Apache-2.0 re-training (`ControlNetHED.pth` in the
lllyasviel/Annotators Hugging Face repo) takes RGB in 0..255 minus a learned mean and fuses the side outputs
without weights: edge = sigmoid(mean of the five side outputs, each resized bilinearly to the input size).

Upstream, for the facts checked here (the code is our own):
- PixArt-alpha `diffusion/model/hed.py` (`HEDdetector.forward`): images in 0..1 times 255, side outputs resized
  with torchvision `TF.resize` (bilinear, align_corners=False) to H x W, `1 / (1 + exp(-mean))`, clipped to 0..1.
- lllyasviel ControlNet-v1-1-nightly `annotator/hed/__init__.py` and controlnet-aux 0.0.10
  `controlnet_aux/hed/__init__.py`: the same network (module names `norm`, `block{1..5}.convs.{i}`,
  `block{1..5}.projection`), resize with `cv2.INTER_LINEAR` (the same half-pixel bilinear).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint_io import StateDictReader
from ..errors import CheckpointError, format_keys

log = logging.getLogger(__name__)

#: (input channels, output channels, 3x3 convolutions) of the five VGG stages; a 2x2 max-pool precedes stages 2..5.
HED_STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


class HEDStage(nn.Module):
    """One VGG stage: 3x3 convolutions each followed by ReLU, and a 1x1 side-output `projection` to one channel."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int, pool_first: bool):
        super().__init__()
        self.pool_first = pool_first
        widths = [in_channels] + [out_channels] * num_convs
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1) for i in range(num_convs))
        self.projection = nn.Conv2d(out_channels, 1, 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool_first:
            h = F.max_pool2d(h, kernel_size=2, stride=2)  # [B, C, H/2, W/2] (floor)
        for conv in self.convs:
            h = F.relu(conv(h))  # [B, C_out, h, w]
        return h, self.projection(h)  # features [B, C_out, h, w], side output [B, 1, h, w]


class HEDNetwork(nn.Module):
    """The `ControlNetHED_Apache2` network; its state-dict keys are those of `ControlNetHED.pth`."""

    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))  # learned RGB mean on the 0..255 scale
        for index, (c_in, c_out, n) in enumerate(HED_STAGES, start=1):
            self.add_module(f"block{index}", HEDStage(c_in, c_out, n, pool_first=index > 1))

    def forward(self, rgb255: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The five raw side outputs (logits) for RGB in 0..255 [B, 3, H, W]; output k is [B, 1, H/2^(k-1),
        W/2^(k-1)] (floor)."""
        h = rgb255 - self.norm  # [B, 3, H, W]
        sides = []
        for index in range(1, len(HED_STAGES) + 1):
            h, side = getattr(self, f"block{index}")(h)  # [B, C, h, w], [B, 1, h, w]
            sides.append(side)
        return tuple(sides)


def fuse_side_outputs(sides: tuple[torch.Tensor, ...] | list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Edge map [B, 1, H, W] in 0..1: each side output resized bilinearly (half-pixel centres) to `size`,
    then sigmoid of their mean, in float32."""
    resized = [F.interpolate(side.float(), size=size, mode="bilinear", align_corners=False)
               for side in sides]  # 5 x [B, 1, H, W]
    mean = torch.cat(resized, dim=1).mean(dim=1, keepdim=True)  # [B, 1, H, W]
    return torch.sigmoid(mean).clamp_(0.0, 1.0)  # [B, 1, H, W]


@torch.no_grad()
def hed_edges(model: HEDNetwork, images: torch.Tensor) -> torch.Tensor:
    """HED edge maps [B, 1, H, W] in 0..1 for RGB `images` [B, 3, H, W] in 0..1 (any float dtype and device).

    The images are not resized (the caller picks the resolution: PixArt-δ feeds the generation's size); each one
    runs in the model's dtype on the model's device, one at a time to bound memory; the result comes back in the
    images' dtype on their device."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected RGB [B, 3, H, W] in 0..1, got shape {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"images: expected floating point values in 0..1, got {images.dtype}.")
    height, width = images.shape[-2:]
    if min(height, width) < 16:  # four 2x2 max-pools need at least 16 pixels a side
        raise ValueError(f"images: HED needs at least 16x16 pixels, got {height}x{width}.")
    param = model.norm
    maps = []
    for image in images.split(1):  # [1, 3, H, W]
        rgb255 = (image.to(param.device, torch.float32) * 255.0).to(param.dtype)  # [1, 3, H, W]
        maps.append(fuse_side_outputs(model(rgb255), (height, width)).to(images.device, images.dtype))  # [1, 1, H, W]
    return torch.cat(maps)  # [B, 1, H, W]


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {key: tuple(t.shape) for key, t in HEDNetwork().state_dict().items()}


def load_hed(path: str | Path, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None) -> HEDNetwork:
    """Load `ControlNetHED.pth` (lllyasviel/Annotators; also as .safetensors) strictly into an eval `HEDNetwork`.

    `dtype` defaults to float32, as every upstream detector runs it (`HEDdetector` in controlnet-aux calls
    `.float()`); half precision is accepted. `device` defaults to the CPU. Files without the exact keys and
    shapes raise `CheckpointError` naming the file."""
    path = Path(path)
    dtype = dtype or torch.float32
    device = torch.device(device or "cpu")
    expected = _expected_shapes()
    with StateDictReader(path) as reader:
        found = reader.shapes()
        if not set(found) & set(expected):
            hint = (" It is the original HED (network-bsds500.pth); PixArt-δ's ControlNet was trained on the "
                    "edges of ControlNetHED.pth." if any(k.startswith(("moduleVgg", "netVgg")) for k in found) else "")
            raise CheckpointError(f"{path}: not a HED edge detector (no ControlNetHED keys such as "
                                  f"'block1.convs.0.weight').{hint} Download ControlNetHED.pth from "
                                  "lllyasviel/Annotators on Hugging Face.")
        missing, unexpected = set(expected) - set(found), set(found) - set(expected)
        if missing or unexpected:
            parts = ([f"missing {format_keys(missing)}"] if missing else []) + \
                    ([f"unexpected {format_keys(unexpected)}"] if unexpected else [])
            raise CheckpointError(f"{path}: not a complete ControlNetHED.pth ({'; '.join(parts)}); "
                                  "re-download ControlNetHED.pth from lllyasviel/Annotators.")
        wrong = [f"{k} {found[k]} (expected {expected[k]})" for k in sorted(expected) if found[k] != expected[k]]
        if wrong:
            raise CheckpointError(f"{path}: tensor shapes do not match ControlNetHED_Apache2: {', '.join(wrong[:3])}; "
                                  "re-download ControlNetHED.pth from lllyasviel/Annotators.")
        state = {key: reader.get(key, dtype=dtype, device=device) for key in expected}
    with torch.device("meta"):
        model = HEDNetwork()
    model.load_state_dict(state, strict=True, assign=True)
    log.info("loaded HED edge detector %s (%s, %s)", path.name, dtype, device)
    return model.eval().requires_grad_(False)
