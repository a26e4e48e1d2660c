"""Tiny random-weight PixArt transformers in every layout `load_transformer` accepts.

The models are scaled down (2 heads x 72 = width 144 as in the released XL/2 head size, depth 2, T5 width 32)
but keep the released models' relationships: micro-condition embedders only in α-1024-MS, a 120- or 300-row
null caption, a stored `pos_embed` whose token count encodes the training resolution (sample sizes
32/64/128/256 -> PE x0.5..x4), diffusers config.json files with the fields diffusers' `PixArtTransformer2DModel`
reads. Key names and shapes are read from `PixArtTransformer` built on the meta device: its parameter names are
the official checkpoint keys. Weights are seeded per variant, so all layouts of one variant hold the same numbers.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from .files import save_safetensors, save_torch, write_json
from ..pixart.config import PRESETS, PixArtConfig
from ..pixart.convert import official_to_diffusers
from ..pixart.embeddings import sincos_pos_embed_2d
from ..pixart.model import PixArtTransformer

TINY_HEADS, TINY_DEPTH, TINY_CAPTION = 2, 2, 32
TINY_HEAD_DIM = 72  # the released XL/2 head size (1152 = 16 x 72)
TINY_CONTROL_BLOCKS = 1  # copied blocks of the tiny ControlNet (13 of 28 in the release)


def tiny_transformer_config(variant: str) -> PixArtConfig:
    """The scaled-down config of a PRESETS variant (its depth kept only for the 42-block '900m' models)."""
    preset = PRESETS[variant]
    return preset.with_(hidden_size=TINY_HEADS * TINY_HEAD_DIM, num_heads=TINY_HEADS, caption_channels=TINY_CAPTION,
                        depth=preset.depth if preset.depth == 42 else TINY_DEPTH, has_null_caption=True)


def official_shapes(cfg: PixArtConfig) -> dict[str, tuple[int, ...]]:
    """Official key -> shape for `cfg` (without the stored pos_embed), from the model built on the meta device."""
    model = PixArtTransformer(cfg, device="meta")
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def stored_pos_embed(cfg: PixArtConfig) -> Tensor:
    """The square base-resolution sin-cos table official checkpoints store: [1, (S/p)^2, C]."""
    side = cfg.base_size
    table = sincos_pos_embed_2d(cfg.hidden_size, side, side, cfg.base_size, cfg.pe_interpolation)  # [side^2, C]
    return table.float().unsqueeze(0)  # [1, side^2, C]


def random_official_state_dict(cfg: PixArtConfig, seed: int = 0, pos_embed: bool = True) -> dict[str, Tensor]:
    """Random official-layout weights: N(0, 1/fan_in) matrices, small biases, tables like the official init."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for key, shape in official_shapes(cfg).items():
        if key.endswith("bias"):
            std = 0.02
        elif key.endswith(("scale_shift_table", "y_embedding")):
            std = 1.0 / math.sqrt(shape[-1])
        else:
            std = 1.0 / math.sqrt(math.prod(shape[1:]))
        out[key] = torch.randn(shape, generator=gen) * std  # [*shape]
    if pos_embed:
        out["pos_embed"] = stored_pos_embed(cfg)  # [1, T, C]
    return out


def diffusers_config_json(cfg: PixArtConfig, *, explicit: bool = True) -> dict:
    """config.json of a diffusers PixArtTransformer2DModel for `cfg`.

    `explicit=False` leaves out interpolation_scale and use_additional_conditions, as in the HF α-1024-MS
    config (diffusers then derives them from sample_size)."""
    data = {
        "_class_name": "PixArtTransformer2DModel", "_diffusers_version": "0.30.0",
        "sample_size": cfg.sample_size, "num_layers": cfg.depth, "attention_head_dim": cfg.head_dim,
        "num_attention_heads": cfg.num_heads, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "patch_size": cfg.patch_size, "cross_attention_dim": cfg.hidden_size, "caption_channels": cfg.caption_channels,
        "norm_type": "ada_norm_single", "norm_elementwise_affine": False, "norm_eps": 1e-6,
        "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000, "attention_bias": True,
        "dropout": 0.0, "norm_num_groups": 32, "upcast_attention": False, "attention_type": "default",
    }
    if explicit:
        data["interpolation_scale"] = cfg.pe_interpolation
        data["use_additional_conditions"] = cfg.micro_condition
    return data


def to_diffusers(sd: dict[str, Tensor], keep_null_caption: bool) -> dict[str, Tensor]:
    """Official -> diffusers keys, every tensor its own contiguous copy (safetensors refuses shared memory)."""
    sd = {k: v for k, v in sd.items() if keep_null_caption or k != "y_embedder.y_embedding"}
    return {k: v.clone().contiguous() for k, v in official_to_diffusers(sd).items()}


def write_diffusers_folder(sd: dict[str, Tensor], cfg: PixArtConfig, folder: Path, *, shards: int = 1,
                           explicit_config: bool = True, keep_null_caption: bool = False) -> Path:
    """A diffusers `transformer/` folder: config.json + diffusion_pytorch_model[-0000i-of-0000n].safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(diffusers_config_json(cfg, explicit=explicit_config), folder / "config.json")
    tensors = to_diffusers(sd, keep_null_caption)
    meta = {"format": "pt"}
    if shards == 1:
        save_safetensors(tensors, folder / "diffusion_pytorch_model.safetensors", meta)
        return folder
    keys = list(tensors)
    weight_map, total = {}, 0
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i * len(keys) // shards:(i + 1) * len(keys) // shards]}
        save_safetensors(part, folder / name, meta)
        weight_map.update(dict.fromkeys(part, name))
        total += sum(t.numel() * t.element_size() for t in part.values())
    write_json({"metadata": {"total_size": total}, "weight_map": weight_map},
               folder / "diffusion_pytorch_model.safetensors.index.json")
    return folder


def _prefixed(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def _comfy_extras(seed: int) -> dict[str, Tensor]:
    """Stand-ins for the VAE and T5 weights a ComfyUI full checkpoint carries next to the DiT."""
    gen = torch.Generator().manual_seed(seed + 1)
    return {"vae.encoder.conv_in.weight": torch.randn(8, 3, 3, 3, generator=gen),
            "vae.decoder.conv_out.weight": torch.randn(3, 8, 3, 3, generator=gen),
            "text_encoders.t5xxl.transformer.shared.weight": torch.randn(16, TINY_CAPTION, generator=gen),
            "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight":
                torch.randn(TINY_CAPTION, TINY_CAPTION, generator=gen)}


def _controlnet(sd: dict[str, Tensor], cfg: PixArtConfig, seed: int) -> dict[str, Tensor]:
    """Official ControlNet .pth state dict: base_model.* + controlnet.N.{copied_block, before_proj, after_proj}."""
    gen = torch.Generator().manual_seed(seed + 2)
    h = cfg.hidden_size
    out = _prefixed(sd, "base_model.")
    for n in range(TINY_CONTROL_BLOCKS):
        for key, value in sd.items():
            if key.startswith(f"blocks.{n}."):
                out[f"controlnet.{n}.copied_block.{key[len(f'blocks.{n}.'):]}"] = value.clone()
        projections = ("before_proj", "after_proj") if n == 0 else ("after_proj",)
        for proj in projections:
            out[f"controlnet.{n}.{proj}.weight"] = torch.randn(h, h, generator=gen) * 0.01  # [C, C]
            out[f"controlnet.{n}.{proj}.bias"] = torch.zeros(h)  # [C]
    return out


Writer = Callable[[dict[str, Tensor], PixArtConfig, int, Path], None]  # (official weights, config, seed, path)


def _torch_file(prefix: str) -> Writer:
    """Official keys under `prefix` in a .pth {"state_dict": ...}."""
    return lambda sd, cfg, seed, path: save_torch({"state_dict": _prefixed(sd, prefix)}, path)


def _official_file(prefix: str) -> Writer:
    return lambda sd, cfg, seed, path: save_safetensors(_prefixed(sd, prefix), path)


def _diffusers_file(prefix: str) -> Writer:
    """Diffusers keys under `prefix` in one .safetensors file (no null caption, as on the HF hub)."""
    return lambda sd, cfg, seed, path: save_safetensors(_prefixed(to_diffusers(sd, False), prefix), path)


def _diffusers_folder(shards: int) -> Writer:
    """α-1024-MS keeps its null caption and an implicit config, as on the HF hub; Σ folders drop the caption."""
    return lambda sd, cfg, seed, path: write_diffusers_folder(
        sd, cfg, path, shards=shards, explicit_config=not cfg.micro_condition, keep_null_caption=cfg.micro_condition)


def _controlnet_file(sd: dict[str, Tensor], cfg: PixArtConfig, seed: int, path: Path) -> None:
    save_torch({"state_dict": _controlnet(sd, cfg, seed)}, path)


def _comfy_checkpoint(sd: dict[str, Tensor], cfg: PixArtConfig, seed: int, path: Path) -> None:
    save_safetensors({**_prefixed(sd, "model.diffusion_model."), **_comfy_extras(seed)}, path)


# the part of a tiny checkpoint's name after its variant -> how that file is written
_WRITERS: dict[str, Writer] = {
    ".pth": _torch_file(""),
    "-module.pth": _torch_file("module."),
    "-controlnet.pth": _controlnet_file,
    ".safetensors": _official_file(""),
    "-net.safetensors": _official_file("net."),
    "-model.safetensors": _official_file("model."),
    "-diffusers": _diffusers_folder(shards=1),
    "-diffusers-sharded": _diffusers_folder(shards=2),
    "-diffusers-single.safetensors": _diffusers_file(""),
    "-transformer-prefix.safetensors": _diffusers_file("transformer."),
    "-comfy-diffusers.safetensors": _diffusers_file("model.diffusion_model."),
    "-comfy-checkpoint.safetensors": _comfy_checkpoint,
}

#: The tiny checkpoints `write_tiny_transformers` writes: a PRESETS variant followed by a key of `_WRITERS`.
TINY_TRANSFORMER_NAMES: tuple[str, ...] = (
    "alpha-256.pth", "alpha-512.pth", "alpha-1024-ms.pth", "alpha-1024-ms.safetensors", "alpha-1024-ms-module.pth",
    "alpha-1024-ms-diffusers", "alpha-1024-ms-controlnet.pth",
    "sigma-256.pth", "sigma-512.pth", "sigma-1024.pth", "sigma-2k.pth", "sigma-1024.safetensors",
    "sigma-512-net.safetensors", "sigma-1024-model.safetensors",
    "sigma-256-diffusers", "sigma-1024-diffusers", "sigma-1024-diffusers-sharded", "sigma-2k-diffusers",
    "sigma-1024-diffusers-single.safetensors", "sigma-1024-transformer-prefix.safetensors",
    "sigma-1024-comfy-diffusers.safetensors", "sigma-1024-comfy-checkpoint.safetensors",
    "sigma-1024-900m.safetensors",
)


def tiny_variant(name: str) -> str:
    """PRESETS name a tiny checkpoint name starts with (longest match)."""
    return max((v for v in PRESETS if name.startswith(v)), key=len)


def write_tiny_transformers(out_dir: Path | str, seed: int = 0) -> dict[str, Path]:
    """Write every checkpoint of `TINY_TRANSFORMER_NAMES` under `out_dir`; returns {name: path}.

    All files of one variant share weights (seed + CRC32 of the variant name), so they load identically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights: dict[str, dict[str, Tensor]] = {}
    paths: dict[str, Path] = {}
    for name in TINY_TRANSFORMER_NAMES:
        variant = tiny_variant(name)
        cfg = tiny_transformer_config(variant)
        if variant not in weights:
            weights[variant] = random_official_state_dict(cfg, seed + zlib.crc32(variant.encode()))
        paths[name] = out_dir / name
        _WRITERS[name[len(variant):]](weights[variant], cfg, seed, paths[name])
    return paths
