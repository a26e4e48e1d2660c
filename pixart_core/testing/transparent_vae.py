"""Tiny random-weight LayerDiffuse transparent VAE files under the six released names.

The real decoder is 208 MB in fp16, too big for a fixture; the loader reads the decoder's channel widths from the
file's shapes, so the decoders here are the same UNet1024 (7 down/up blocks, the same attention blocks, the same
key names) at widths `TINY_DECODER_WIDTHS` (617,612 parameters, 1.3 MB). The offset encoder has one fixed architecture
and is small (1.18M parameters, 2.4 MB in fp16), so it is written at its real size. Weights are seeded fp16;
the zero-initialised convs of upstream (latent_conv_in, the encoder's last conv) are random here so that every
input reaches the output.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..rgba.transparent_encoder import LatentTransparencyOffsetEncoder
from ..rgba.transparent_load import RELEASED_FILES
from ..rgba.transparent_unet import TransparentUNet, TransparentUNetConfig
from .files import save_safetensors

TINY_DECODER_WIDTHS = (8, 8, 16, 16, 32, 32, 32)


def random_state_dict(module: torch.nn.Module, seed: int, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Seeded weights for every tensor of `module` (may live on the meta device): convs/linears ~ N(0, 1/fan_in),
    norm weights ~ 1 + N(0, 0.2^2), biases small; rounded to `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in sorted(module.state_dict().items()):
        shape = tuple(tensor.shape)
        noise = torch.randn(shape, generator=generator)  # [*shape]
        is_norm = "norm" in key
        if is_norm and key.endswith(".weight"):
            value = 1.0 + 0.2 * noise
        elif key.endswith(".bias"):
            value = (0.2 if is_norm else 0.05) * noise
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            value = noise / fan_in ** 0.5
        state[key] = value.to(dtype)
    return state


def tiny_decoder_state_dict(seed: int = 0, widths: tuple[int, ...] = TINY_DECODER_WIDTHS) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        unet = TransparentUNet(TransparentUNetConfig(widths=widths))
    return random_state_dict(unet, seed)


def encoder_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        net = LatentTransparencyOffsetEncoder()
    return random_state_dict(net, seed)


def write_tiny_transparent_vaes(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the six files into `out_dir`; returns {released file name: path}. Each family gets its own seed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, ((role, family), file_name) in enumerate(sorted(RELEASED_FILES.items())):
        state = tiny_decoder_state_dict(seed + index) if role == "decoder" else encoder_state_dict(seed + index)
        path = out_dir / file_name
        save_safetensors(state, path, metadata={"format": "pt", "layerdiffuse_family": family,
                                                "note": "tiny random-weight test fixture"})
        written[file_name] = path
    return written
