"""Load an `AutoencoderKL` from a diffusers folder or a single file (LDM or diffusers keys, bare or in a checkpoint).

Accepted inputs:
- a diffusers VAE folder (`config.json` + `diffusion_pytorch_model.safetensors|.bin`), or a pipeline folder
  with a `vae/` subfolder;
- a single `.safetensors/.sft/.pt/.pth/.ckpt/.bin` file holding the VAE in the LDM layout (ComfyUI's
  models/vae) or in the diffusers layout (new or pre-0.14 attention names), either bare or under a
  `first_stage_model.` (full SD checkpoint; unet/text-encoder keys are skipped) or `vae.` prefix.
For single files the config is inferred from tensor shapes; `norm_num_groups` cannot be read from shapes and
is taken as 32 (true for every SD/SDXL VAE). The scaling factor comes from the caller, else from what the file
reveals (an SD-1.x/2.x checkpoint carries `cond_stage_model.*` -> 0.18215; an SDXL one `conditioner.*` ->
0.13025; a safetensors `modelspec.architecture` naming SDXL -> 0.13025), else stays None.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import torch

from ..checkpoint_io import StateDictReader, open_weights, read_json
from ..errors import CheckpointError
from .config import SD_SCALING_FACTOR, SDXL_SCALING_FACTOR, VAEConfig
from .convert import ldm_key, legacy_diffusers_key
from .model import AutoencoderKL

log = logging.getLogger(__name__)

VAE_PREFIXES = ("", "first_stage_model.", "vae.")
_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
_OTHER_MODELS = (  # (key fragment, what the file is) for the error message on a wrong file
    ("x_embedder.proj.weight", "a PixArt/DiT transformer (put it in models/diffusion_models)"),
    ("transformer_blocks.0.", "a diffusers transformer (a PixArt DiT, not a VAE)"),
    ("encoder.block.0.layer.0.SelfAttention", "a T5 text encoder (put it in models/text_encoders)"),
    ("shared.weight", "a T5 text encoder (put it in models/text_encoders)"),
    ("model.diffusion_model.", "a diffusion checkpoint without VAE weights"),
    ("controlnet", "a ControlNet"),
)


def load_vae(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", *,
             scaling_factor: float | None = None, force_upcast: bool | None = None) -> AutoencoderKL:
    """Load a VAE for inference (eval mode, no grads), streaming each tensor straight into `dtype` on `device`.

    `scaling_factor` / `force_upcast` override the config (needed for a bare single file whose family is
    unknown). With `dtype=torch.float16` and `force_upcast` true (SDXL VAE; also diffusers' default, used for
    single files) the weights stay float32, because the SDXL VAE overflows in float16; pass
    `force_upcast=False` for an fp16-safe VAE such as `madebyollin/sdxl-vae-fp16-fix`.
    Raises CheckpointError naming the file for missing/wrong/truncated files and mismatched keys.
    """
    path = Path(path)
    if path.is_dir():
        cfg, reader = _open_folder(path)
        source = "diffusers"
    else:
        reader = StateDictReader(path)
        cfg, source = None, "single file"
    try:
        prefix = _vae_prefix(reader)
        layout = _layout(reader, prefix)
        if cfg is None:
            cfg = _infer_config(reader, prefix, layout)
            cfg = _with(cfg, scaling_factor=_scaling_hint(reader))
        cfg = _with(cfg, scaling_factor=scaling_factor, force_upcast=force_upcast)
        weight_dtype = torch.float32 if dtype == torch.float16 and cfg.force_upcast else dtype
        if weight_dtype != dtype:
            log.info("%s: force_upcast is set, keeping the VAE in float32 instead of float16", reader.name)
        with torch.device("meta"):
            model = AutoencoderKL(cfg)
        state = _read_state(reader, model, prefix, layout, weight_dtype, torch.device(device))
    finally:
        reader.close()
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device)
    model.eval().requires_grad_(False)
    log.info("loaded VAE %s (%s, %s layout, widths %s, scaling %s) as %s", path, source, layout,
             cfg.block_out_channels, cfg.scaling_factor, weight_dtype)
    return model


def _with(cfg: VAEConfig, **changes) -> VAEConfig:
    changes = {k: v for k, v in changes.items() if v is not None}
    return replace(cfg, **changes) if changes else cfg


def _open_folder(folder: Path) -> tuple[VAEConfig, StateDictReader]:
    if not (folder / "config.json").exists() and (folder / "vae" / "config.json").exists():
        folder = folder / "vae"  # a whole diffusers pipeline
    config_path = folder / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{folder}: no config.json; pass a diffusers VAE folder (config.json + "
                              f"diffusion_pytorch_model.safetensors) or a single weight file.")
    try:
        cfg = VAEConfig.from_diffusers(read_json(config_path), source=str(config_path))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{config_path}: {err}") from err
    try:
        reader = open_weights(folder, stems=("diffusion_pytorch_model",))
    except CheckpointError:
        reader = open_weights(folder)
    return cfg, reader


def _vae_prefix(reader: StateDictReader) -> str:
    for prefix in VAE_PREFIXES:
        if f"{prefix}encoder.conv_in.weight" in reader or f"{prefix}decoder.conv_in.weight" in reader:
            return prefix
    keys = reader.keys()
    for fragment, what in _OTHER_MODELS:
        if any(fragment in key for key in keys):
            raise CheckpointError(f"{reader.name}: this is {what}, not a VAE (no encoder/decoder weights).")
    sample = ", ".join(keys[:5]) or "none"
    raise CheckpointError(f"{reader.name}: no VAE weights found (expected 'encoder.conv_in.weight', optionally "
                          f"under 'first_stage_model.' or 'vae.'; first keys: {sample}).")


def _layout(reader: StateDictReader, prefix: str) -> str:
    keys = [k for k in reader.keys() if k.startswith(prefix)]
    if any(k.startswith(f"{prefix}encoder.down.") or k.startswith(f"{prefix}decoder.up.") for k in keys):
        return "ldm"
    if any(".down_blocks." in k or ".up_blocks." in k for k in keys):
        return "diffusers"
    raise CheckpointError(f"{reader.name}: VAE weights have neither LDM ('encoder.down.0.') nor diffusers "
                          f"('encoder.down_blocks.0.') block names; the file is incomplete or not a VAE.")


def _shape(reader: StateDictReader, key: str) -> tuple[int, ...]:
    if key not in reader:
        raise CheckpointError(f"{reader.name}: missing VAE tensor {key!r}; the file is incomplete.")
    return reader.info(key).shape


def _infer_config(reader: StateDictReader, prefix: str, layout: str) -> VAEConfig:
    """Read the architecture from tensor shapes (single files carry no config)."""
    level_name, block_name = ("down", "block") if layout == "ldm" else ("down_blocks", "resnets")
    base = f"{prefix}encoder.{level_name}."
    levels, layers = set(), set()
    for key in reader.keys():
        match = re.match(rf"{re.escape(base)}(\d+)\.{block_name}\.(\d+)\.", key)
        if match:
            levels.add(int(match[1]))
            if match[1] == "0":
                layers.add(int(match[2]))
    if not levels or sorted(levels) != list(range(len(levels))) or sorted(layers) != list(range(len(layers))):
        raise CheckpointError(f"{reader.name}: encoder blocks are missing or not numbered 0..n "
                              f"(levels {sorted(levels)}, layers {sorted(layers)}); the file is incomplete.")
    widths = tuple(_shape(reader, f"{base}{i}.{block_name}.0.conv1.weight")[0] for i in range(len(levels)))
    latent = _shape(reader, f"{prefix}decoder.conv_in.weight")[1]
    attention = f"{prefix}encoder.mid.attn_1.q.weight" if layout == "ldm" else None
    has_attention = (attention in reader) if attention else any(
        k.startswith(f"{prefix}encoder.mid_block.attentions.0.") for k in reader.keys())
    try:
        return VAEConfig(
            in_channels=_shape(reader, f"{prefix}encoder.conv_in.weight")[1],
            out_channels=_shape(reader, f"{prefix}decoder.conv_out.weight")[0],
            block_out_channels=widths, layers_per_block=len(layers), latent_channels=latent,
            norm_num_groups=32, scaling_factor=None, force_upcast=True,
            use_quant_conv=f"{prefix}quant_conv.weight" in reader,
            use_post_quant_conv=f"{prefix}post_quant_conv.weight" in reader,
            mid_block_add_attention=has_attention)
    except ValueError as err:
        raise CheckpointError(f"{reader.name}: unsupported VAE shapes ({err}).") from err


def _scaling_hint(reader: StateDictReader) -> float | None:
    """Scaling factor from what else a single file holds (full checkpoints) or its metadata; None if unknown."""
    architecture = str(reader.metadata.get("modelspec.architecture", "")).lower()
    if "xl" in architecture:
        return SDXL_SCALING_FACTOR
    if "stable-diffusion-v1" in architecture or "stable-diffusion-v2" in architecture:
        return SD_SCALING_FACTOR
    keys = reader.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return SDXL_SCALING_FACTOR
    if any(k.startswith("cond_stage_model.") for k in keys):
        return SD_SCALING_FACTOR
    return None


def _source_names(reader: StateDictReader, model: AutoencoderKL, prefix: str, layout: str) -> dict[str, str]:
    """Our parameter name -> the name in the file (missing ones map to their preferred name)."""
    levels = model.config.num_levels
    names = {}
    for key in model.state_dict():
        if layout == "ldm":
            names[key] = prefix + ldm_key(key, levels)
        else:
            legacy = prefix + legacy_diffusers_key(key)
            names[key] = legacy if legacy in reader and prefix + key not in reader else prefix + key
    return names


def _read_state(reader: StateDictReader, model: AutoencoderKL, prefix: str, layout: str, dtype: torch.dtype,
                device: torch.device) -> dict[str, torch.Tensor]:
    names = _source_names(reader, model, prefix, layout)
    wanted = set(names.values())
    vae_keys = [k for k in reader.keys() if k.startswith(prefix) and k[len(prefix):].startswith(_VAE_PARTS)]
    unexpected = [k for k in vae_keys if k not in wanted]
    missing = [src for src in names.values() if src not in reader]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        raise CheckpointError(f"{reader.name}: VAE keys do not match an AutoencoderKL with widths "
                              f"{model.config.block_out_channels}: {'; '.join(problems)}. The file is "
                              f"incomplete or another model.")
    skipped = len(reader) - len(vae_keys)
    if skipped:
        log.debug("%s: skipping %d non-VAE tensors", reader.name, skipped)
    targets = model.state_dict()
    state = {}
    for key, src in names.items():
        want = tuple(targets[key].shape)
        have = tuple(reader.info(src).shape)
        if have != want and have != want + (1, 1):
            raise CheckpointError(f"{reader.name}: tensor {src!r} has shape {have}, expected {want} "
                                  f"(config {model.config.block_out_channels}); wrong or mismatched file.")
        tensor = reader.get(src, dtype=dtype, device=device)
        state[key] = tensor.reshape(want) if have != want else tensor  # LDM 1x1 conv [C, C, 1, 1] -> Linear [C, C]
    return state
