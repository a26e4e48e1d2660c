"""Load LayerDiffuse's transparent decoder (UNet1024) and offset encoder from their released safetensors files.

Files (Hugging Face LayerDiffusion/layerdiffusion-v1 and lllyasviel/LayerDiffuse_Diffusers), fp16:
    vae_transparent_decoder / vae_transparent_encoder                    SDXL latent space (PixArt-Sigma)
    layer_sd15_vae_transparent_decoder / layer_sd15_..._encoder          SD1.5 latent space (PixArt-alpha)
    ld_diffusers_sdxl_vae_transparent_decoder / ..._encoder              SDXL latent space, diffusers CLI release
Keys must equal the released names exactly (strict); a missing or extra key refuses the file, naming it. The
decoder's channel widths are read from the file's shapes (the released files give the released 104,104,804-
parameter network; smaller test files give the same network narrower); everything else is fixed.

Latent-scale conventions, settled from the upstream call sites (the weights themselves were not available here):
- Decoder latent, all three families: the RAW (unscaled) VAE latent, i.e. the sampler's latent divided by the VAE
  scaling factor (`latent_scale` = 1.0 on the raw latent).
  * Forge ext as released for the weights (lllyasviel/sd-forge-layerdiffuse up to commit e4d5060,
    `lib_layerdiffusion/models.py` `TransparentVAEDecoder.patch`): a wrapper around Forge's `VAE.decode`, which
    receives `latent_format.process_out(x)` (Forge `modules_forge/forge_loader.py` `patched_decode_first_stage`).
  * huchenlei/ComfyUI-layerdiffuse `layered_diffusion.py` `LayeredDiffusionDecode.decode`: ComfyUI
    `LATENT["samples"]`, which samplers return after `process_latent_out` (unscaled).
  * LayerDiffuse_DiffusersCLI `demo_sdxl_t2i.py`: `latents / vae.config.scaling_factor` into
    `lib_layerdiffuse/vae.py` `TransparentVAEDecoder.forward`, which also VAE-decodes that latent.
  * The outlier: Forge ext since commit 5fe3cfd (2024-07, `scripts/forge_layerdiffusion.py`) passes
    `p.latents_after_sampling`, the sampler's scaled latents; older call sites and both ports disagree with it.
- Encoder offset: `latent_raw = mean + std * offset * offset_scale` (raw VAE posterior of the grey composite).
  * Forge files (`vae_transparent_encoder`, `layer_sd15_vae_transparent_encoder`): offset_scale 1.0 —
    `scripts/forge_layerdiffusion.py` `vae_regulation`: `posterior.mean + posterior.std * latent_offset`.
  * `ld_diffusers_sdxl_vae_transparent_encoder`: offset_scale 300.0 — CLI `lib_layerdiffuse/vae.py`
    `TransparentVAEEncoder(alpha=300.0)`, `offset = self.model(offset_feed) * self.alpha`. Whether the CLI file
    is the Forge file with its last conv divided by 300 is not verified (needs both files).
  * A file whose name matches no family gets offset_scale 1.0 with a warning; pass `offset_scale=` to choose.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint_io import StateDictReader
from ..errors import CheckpointError, format_keys
from .transparent_decoder import TransparentDecoder
from .transparent_encoder import LatentTransparencyOffsetEncoder, TransparentEncoder
from .transparent_unet import NUM_BLOCKS, TransparentUNet, TransparentUNetConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerDiffuseFamily:
    """What a file family expects: its latent space and the two scale conventions (module docstring)."""

    name: str
    latent_space: str  # a key of pixart_core.vae.config.LATENT_SPACES
    latent_scale: float  # multiplier on the raw VAE latent fed to the decoder
    offset_scale: float  # multiplier on the encoder's raw offset


FAMILIES = {
    "sdxl": LayerDiffuseFamily("sdxl", "sdxl", 1.0, 1.0),
    "sd15": LayerDiffuseFamily("sd15", "sd15", 1.0, 1.0),
    "sdxl-diffusers": LayerDiffuseFamily("sdxl-diffusers", "sdxl", 1.0, 300.0),
}
#: The six released file names, by role and family.
RELEASED_FILES = {
    ("decoder", "sdxl"): "vae_transparent_decoder.safetensors",
    ("encoder", "sdxl"): "vae_transparent_encoder.safetensors",
    ("decoder", "sd15"): "layer_sd15_vae_transparent_decoder.safetensors",
    ("encoder", "sd15"): "layer_sd15_vae_transparent_encoder.safetensors",
    ("decoder", "sdxl-diffusers"): "ld_diffusers_sdxl_vae_transparent_decoder.safetensors",
    ("encoder", "sdxl-diffusers"): "ld_diffusers_sdxl_vae_transparent_encoder.safetensors",
}

_DECODER_ANCHORS = ("conv_in.weight", "latent_conv_in.weight")
_ENCODER_ANCHOR = "blocks.16.weight"
# (substring of some key, what the file looks like); first match wins. Only for error messages.
_LOOKALIKES = (
    ("::lora::", "a LayerDiffuse UNet patch (layer_xl_* / layer_sd15_*), which modifies an SD UNet, not a VAE file"),
    ("::diff::", "a LayerDiffuse UNet patch (layer_xl_* / layer_sd15_*), which modifies an SD UNet, not a VAE file"),
    ("x_embedder.proj.weight", "a PixArt transformer (DiT); load it with the PixArt model loader"),
    ("t_block.1.weight", "a PixArt transformer (DiT); load it with the PixArt model loader"),
    ("adaln_single.", "a PixArt transformer (DiT, diffusers layout); load it with the PixArt model loader"),
    ("controlnet", "a ControlNet"),
    ("SelfAttention.q.weight", "a T5 text encoder; load it with the T5 loader"),
    ("shared.weight", "a T5 text encoder; load it with the T5 loader"),
    ("lora_", "a LoRA"),
    ("decoder.up_blocks.", "an ordinary VAE (diffusers layout); load it with the VAE loader"),
    ("decoder.up.", "an ordinary VAE (original SD layout); load it with the VAE loader"),
    ("first_stage_model.", "a full Stable Diffusion checkpoint"),
    ("input_blocks.", "a Stable Diffusion UNet"),
    ("time_embedding.", "a Stable Diffusion UNet (diffusers layout)"),
)


def family_from_name(path: str | Path) -> LayerDiffuseFamily | None:
    """The family a released file name belongs to (the CLI's `ld_diffusers_sdxl_*` before the Forge names)."""
    name = Path(path).name.lower()
    if "ld_diffusers" in name:
        return FAMILIES["sdxl-diffusers"]
    if "sd15" in name or "sd_15" in name or "sd1.5" in name:
        return FAMILIES["sd15"]
    if "vae_transparent" in name or "sdxl" in name:
        return FAMILIES["sdxl"]
    return None


def default_transparent_dtype(device: torch.device) -> torch.dtype:
    """float16 on GPUs (the released weights are fp16; upstream runs them so), float32 on CPUs."""
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def _looks_like(keys: list[str]) -> str:
    key_set = set(keys)
    if all(k.startswith("blocks.") for k in keys) and _ENCODER_ANCHOR in key_set:
        return "a LayerDiffuse transparent offset encoder; load it with load_transparent_encoder"
    if all(anchor in key_set for anchor in _DECODER_ANCHORS):
        return "a LayerDiffuse transparent decoder (UNet1024); load it with load_transparent_decoder"
    for needle, text in _LOOKALIKES:
        if any(needle in k for k in keys):
            return text
    return ""


def _not_this(name: str, what: str, keys: list[str]) -> CheckpointError:
    hint = _looks_like(keys)
    detail = f"it looks like {hint}" if hint else f"its keys are {format_keys(keys, 4) or 'none'}"
    return CheckpointError(f"{name}: not a LayerDiffuse {what}; {detail}.")


def _check_keys(name: str, what: str, reader: StateDictReader, expected: dict[str, tuple[int, ...]]) -> None:
    """Refuse a file whose key set or shapes differ from `expected`, in one line naming the file and keys."""
    keys = reader.keys()
    missing = sorted(set(expected) - set(keys))
    extra = sorted(set(keys) - set(expected))
    if missing or extra:
        parts = ([f"missing keys {format_keys(missing, 3)}"] if missing else []) + (
            [f"unexpected keys {format_keys(extra, 3)}"] if extra else [])
        raise CheckpointError(f"{name}: not a complete LayerDiffuse {what}: {'; '.join(parts)}. The file is damaged "
                              "or another model; re-download it (Hugging Face LayerDiffusion/layerdiffusion-v1).")
    for key, shape in expected.items():
        found = reader.info(key).shape
        if tuple(found) != tuple(shape):
            raise CheckpointError(f"{name}: tensor {key!r} has shape {tuple(found)}, a LayerDiffuse {what} needs "
                                  f"{tuple(shape)}; the file is damaged or another model.")
        if not reader.info(key).dtype.is_floating_point:
            raise CheckpointError(f"{name}: tensor {key!r} is {reader.info(key).dtype}, not floating point; the "
                                  "file is damaged or another model.")


def _decoder_config(name: str, reader: StateDictReader) -> TransparentUNetConfig:
    """The channel widths from the output channels of conv_in and each down block's first conv."""
    if not all(anchor in reader for anchor in _DECODER_ANCHORS):
        raise _not_this(name, "transparent decoder (UNet1024)", reader.keys())
    width_keys = ["conv_in.weight"] + [f"down_blocks.{i}.resnets.0.conv1.weight" for i in range(1, NUM_BLOCKS)]
    absent = [k for k in width_keys if k not in reader]
    if absent:
        raise CheckpointError(f"{name}: not a complete LayerDiffuse transparent decoder: missing keys "
                              f"{format_keys(absent, 3)}. Re-download it (Hugging Face LayerDiffusion/layerdiffusion-v1).")
    widths = tuple(int(reader.info(k).shape[0]) for k in width_keys)
    try:
        return TransparentUNetConfig(widths=widths)
    except ValueError as err:
        raise CheckpointError(f"{name}: not a LayerDiffuse transparent decoder ({err}).") from err


def _fill(module: torch.nn.Module, reader: StateDictReader, dtype: torch.dtype, device: torch.device) -> None:
    state = {key: reader.get(key, dtype, device) for key in module.state_dict()}
    module.load_state_dict(state, strict=True, assign=True)
    module.eval().requires_grad_(False)


def _resolve(dtype: torch.dtype | None, device: torch.device | str | None) -> tuple[torch.dtype, torch.device]:
    device = torch.device(device if device is not None else "cpu")
    return dtype or default_transparent_dtype(device), device


def load_transparent_decoder(path: str | Path, dtype: torch.dtype | None = None,
                             device: torch.device | str | None = None) -> TransparentDecoder:
    """A `TransparentDecoder` from a released (or same-layout) decoder file; dtype defaults to fp16 on GPUs and
    fp32 on CPUs, device to the CPU. Raises CheckpointError naming the file for any wrong or damaged file."""
    dtype, device = _resolve(dtype, device)
    name = str(path)
    with StateDictReader(path) as reader:
        config = _decoder_config(name, reader)
        with torch.device("meta"):
            unet = TransparentUNet(config)
        expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
        _check_keys(name, "transparent decoder (UNet1024)", reader, expected)
        _fill(unet, reader, dtype, device)
    family = family_from_name(path)
    log.info("loaded LayerDiffuse transparent decoder %s (%s, widths %s) as %s on %s", name,
             family.name if family else "unknown family", config.widths, dtype, device)
    return TransparentDecoder(unet, family=family.name if family else None,
                              latent_space=family.latent_space if family else None,
                              latent_scale=family.latent_scale if family else 1.0, name=name)


def load_transparent_encoder(path: str | Path, dtype: torch.dtype | None = None,
                             device: torch.device | str | None = None, *,
                             offset_scale: float | None = None) -> TransparentEncoder:
    """A `TransparentEncoder` from a released offset-encoder file. `offset_scale` overrides the family's
    convention (1 for the Forge files, 300 for `ld_diffusers_*`). Raises CheckpointError naming the file."""
    dtype, device = _resolve(dtype, device)
    name = str(path)
    with StateDictReader(path) as reader:
        if _ENCODER_ANCHOR not in reader:
            raise _not_this(name, "transparent offset encoder", reader.keys())
        with torch.device("meta"):
            net = LatentTransparencyOffsetEncoder()
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        _check_keys(name, "transparent offset encoder", reader, expected)
        _fill(net, reader, dtype, device)
    family = family_from_name(path)
    if offset_scale is None:
        if family is None:
            log.warning("%s: file name matches no LayerDiffuse release; assuming the Forge offset scale 1.0 "
                        "(pass offset_scale=300.0 for the ld_diffusers_* files)", name)
        offset_scale = family.offset_scale if family else 1.0
    log.info("loaded LayerDiffuse transparent encoder %s (%s, offset x%g) as %s on %s", name,
             family.name if family else "unknown family", offset_scale, dtype, device)
    return TransparentEncoder(net, family=family.name if family else None,
                              latent_space=family.latent_space if family else None,
                              offset_scale=float(offset_scale), name=name)
