"""Tiny random-weight PixArt transformers in every layout `load_transformer` accepts (for tests and demos).

The models are scaled down (width 48 = 3 heads x 16, depth 2, T5 width 32) but keep the released models'
relationships: micro-condition embedders only in α-1024-MS, a 120- or 300-row null caption, a stored `pos_embed`
whose token count encodes the training resolution (sample sizes 32/64/128/256 -> PE x0.5..x4), diffusers
config.json files with the fields diffusers' `PixArtTransformer2DModel` reads. Weights are seeded per variant, so
all layouts of one variant hold the same numbers. No diffusers/transformers import (files are written by hand).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint_io import save_safetensors, save_torch, write_json
from .config import PRESETS, PixArtConfig
from .convert import official_to_diffusers

TINY_WIDTH, TINY_HEADS, TINY_DEPTH, TINY_CAPTION = 48, 3, 2, 32
TINY_CONTROL_BLOCKS = 1  # copied blocks of the tiny ControlNet (13 of 28 in the release)


def tiny_config(variant: str) -> PixArtConfig:
    """The scaled-down config of a PRESETS variant (its depth kept only for the 42-block '900m' models)."""
    preset = PRESETS[variant]
    return preset.with_(hidden_size=TINY_WIDTH, num_heads=TINY_HEADS, caption_channels=TINY_CAPTION,
                        depth=preset.depth if preset.depth == 42 else TINY_DEPTH,
                        has_null_caption=True)


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """[sin(pos * w), cos(pos * w)] with w = 1 / 10000^(i / (dim/2)) (DiT/PixArt 1-D sin-cos table)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # [dim/2]
    angles = pos.reshape(-1, 1) * omega  # [N, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # [N, dim]


def stored_pos_embed(cfg: PixArtConfig) -> Tensor:
    """The square base-resolution table official checkpoints store (pixart.md §1.5): [1, (S/p)^2, C]."""
    side = cfg.base_size
    coords = torch.arange(side, dtype=torch.float64) / (side / cfg.base_size) / cfg.pe_interpolation  # [side]
    grid_h, grid_w = torch.meshgrid(coords, coords, indexing="ij")  # [side, side] each
    emb = torch.cat([_sincos_1d(cfg.hidden_size // 2, grid_w), _sincos_1d(cfg.hidden_size // 2, grid_h)], dim=1)
    return emb.float().unsqueeze(0)  # [1, side*side, C]


def official_shapes(cfg: PixArtConfig) -> dict[str, tuple[int, ...]]:
    """Official key -> shape for `cfg` (pixart.md §2a), without the stored pos_embed."""
    h, p, c = cfg.hidden_size, cfg.patch_size, cfg.caption_channels
    mlp = int(h * cfg.mlp_ratio)
    shapes: dict[str, tuple[int, ...]] = {
        "x_embedder.proj.weight": (h, cfg.in_channels, p, p), "x_embedder.proj.bias": (h,),
        "t_embedder.mlp.0.weight": (h, 256), "t_embedder.mlp.0.bias": (h,),
        "t_embedder.mlp.2.weight": (h, h), "t_embedder.mlp.2.bias": (h,),
        "t_block.1.weight": (6 * h, h), "t_block.1.bias": (6 * h,),
        "y_embedder.y_proj.fc1.weight": (h, c), "y_embedder.y_proj.fc1.bias": (h,),
        "y_embedder.y_proj.fc2.weight": (h, h), "y_embedder.y_proj.fc2.bias": (h,),
    }
    if cfg.has_null_caption:
        shapes["y_embedder.y_embedding"] = (cfg.model_max_length, c)
    if cfg.micro_condition:
        for name in ("csize_embedder", "ar_embedder"):
            shapes.update({f"{name}.mlp.0.weight": (h // 3, 256), f"{name}.mlp.0.bias": (h // 3,),
                           f"{name}.mlp.2.weight": (h // 3, h // 3), f"{name}.mlp.2.bias": (h // 3,)})
    for n in range(cfg.depth):
        block = {"scale_shift_table": (6, h), "attn.qkv.weight": (3 * h, h), "attn.qkv.bias": (3 * h,),
                 "attn.proj.weight": (h, h), "attn.proj.bias": (h,),
                 "cross_attn.q_linear.weight": (h, h), "cross_attn.q_linear.bias": (h,),
                 "cross_attn.kv_linear.weight": (2 * h, h), "cross_attn.kv_linear.bias": (2 * h,),
                 "cross_attn.proj.weight": (h, h), "cross_attn.proj.bias": (h,),
                 "mlp.fc1.weight": (mlp, h), "mlp.fc1.bias": (mlp,), "mlp.fc2.weight": (h, mlp), "mlp.fc2.bias": (h,)}
        shapes.update({f"blocks.{n}.{k}": v for k, v in block.items()})
    shapes.update({"final_layer.scale_shift_table": (2, h),
                   "final_layer.linear.weight": (p * p * cfg.out_channels, h),
                   "final_layer.linear.bias": (p * p * cfg.out_channels,)})
    return shapes


def random_official_state_dict(cfg: PixArtConfig, seed: int = 0, pos_embed: bool = True) -> dict[str, Tensor]:
    """Random official-layout weights: N(0, 1/fan_in) matrices, small biases, tables like the official init."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for key, shape in official_shapes(cfg).items():
        if key.endswith("bias"):
            std = 0.02
        elif key.endswith("scale_shift_table") or key.endswith("y_embedding"):
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


#: name -> (expected PixArtConfig.variant, expected Detection.layout, expected key prefix)
TINY_CHECKPOINTS: dict[str, tuple[str, str, str]] = {
    "alpha-256.pth": ("alpha-256-d2", "official", ""),
    "alpha-512.pth": ("alpha-512-d2", "official", ""),
    "alpha-1024-ms.pth": ("alpha-1024-ms-d2", "official", ""),
    "alpha-1024-ms.safetensors": ("alpha-1024-ms-d2", "official", ""),
    "alpha-1024-ms-module.pth": ("alpha-1024-ms-d2", "official", "module."),
    "alpha-1024-ms-diffusers": ("alpha-1024-ms-d2", "diffusers", ""),
    "alpha-1024-ms-controlnet.pth": ("alpha-1024-ms-d2", "controlnet-official", "base_model."),
    "sigma-256.pth": ("sigma-256-d2", "official", ""),
    "sigma-512.pth": ("sigma-512-d2", "official", ""),
    "sigma-1024.pth": ("sigma-1024-d2", "official", ""),
    "sigma-2k.pth": ("sigma-2k-d2", "official", ""),
    "sigma-1024.safetensors": ("sigma-1024-d2", "official", ""),
    "sigma-512-net.safetensors": ("sigma-512-d2", "official", "net."),
    "sigma-1024-model.safetensors": ("sigma-1024-d2", "official", "model."),
    "sigma-256-diffusers": ("sigma-256-d2", "diffusers", ""),
    "sigma-1024-diffusers": ("sigma-1024-d2", "diffusers", ""),
    "sigma-1024-diffusers-sharded": ("sigma-1024-d2", "diffusers", ""),
    "sigma-2k-diffusers": ("sigma-2k-d2", "diffusers", ""),
    "sigma-1024-diffusers-single.safetensors": ("sigma-1024-d2", "diffusers", ""),
    "sigma-1024-transformer-prefix.safetensors": ("sigma-1024-d2", "diffusers", "transformer."),
    "sigma-1024-comfy-diffusers.safetensors": ("sigma-1024-d2", "diffusers", "model.diffusion_model."),
    "sigma-1024-comfy-checkpoint.safetensors": ("sigma-1024-d2", "official", "model.diffusion_model."),
    "sigma-1024-900m.safetensors": ("sigma-1024-900m", "official", ""),
}


def tiny_variant(name: str) -> str:
    """PRESETS name a tiny checkpoint name starts with (longest match)."""
    return max((v for v in PRESETS if name.startswith(v)), key=len)


def write_tiny_transformers(out_dir: Path | str, seed: int = 0) -> dict[str, Path]:
    """Write every tiny checkpoint of `TINY_CHECKPOINTS` under `out_dir`; returns {name: path}.

    All files of one variant share weights (seed + CRC32 of the variant name), so they load identically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights: dict[str, dict[str, Tensor]] = {}
    for name in TINY_CHECKPOINTS:
        variant = tiny_variant(name)
        if variant not in weights:
            weights[variant] = random_official_state_dict(tiny_config(variant), seed + zlib.crc32(variant.encode()))
    paths: dict[str, Path] = {}
    for name in TINY_CHECKPOINTS:
        variant = tiny_variant(name)
        cfg, sd, path = tiny_config(variant), weights[variant], out_dir / name
        rest = name[len(variant):]
        if rest in (".pth", "-module.pth", "-controlnet.pth"):
            body = {".pth": sd, "-module.pth": _prefixed(sd, "module."),
                    "-controlnet.pth": _controlnet(sd, cfg, seed)}[rest]
            save_torch({"state_dict": {k: v.clone() for k, v in body.items()}}, path)
        elif rest in (".safetensors", "-net.safetensors", "-model.safetensors"):
            save_safetensors(_prefixed(sd, {".safetensors": "", "-net.safetensors": "net.",
                                            "-model.safetensors": "model."}[rest]), path)
        elif rest in ("-diffusers", "-diffusers-sharded"):
            write_diffusers_folder(sd, cfg, path, shards=2 if rest.endswith("sharded") else 1,
                                   explicit_config=not cfg.micro_condition, keep_null_caption=cfg.micro_condition)
        elif rest == "-diffusers-single.safetensors":
            save_safetensors(to_diffusers(sd, False), path)
        elif rest == "-transformer-prefix.safetensors":
            save_safetensors(_prefixed(to_diffusers(sd, False), "transformer."), path)
        elif rest == "-comfy-diffusers.safetensors":
            save_safetensors(_prefixed(to_diffusers(sd, False), "model.diffusion_model."), path)
        elif rest == "-comfy-checkpoint.safetensors":
            save_safetensors({**_prefixed(sd, "model.diffusion_model."), **_comfy_extras(seed)}, path)
        else:
            raise AssertionError(f"no writer for tiny checkpoint {name!r}")
        paths[name] = path
    return paths
