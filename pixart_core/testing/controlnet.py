"""Tiny random PixArt-δ ControlNets in every layout `load_controlnet` reads, and a random full-size HED network.

Key names and shapes come from `PixArtControlNet` and `HEDNetwork` built on the meta device. The copied blocks
hold their own random weights (not copies of the base blocks) and the projections are random too, not zero as
a fresh branch: a test that wires the wrong block or drops a residual then sees a difference. Every layout of one
call holds the same numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from .files import save_safetensors, save_torch, write_json
from ..controlnet.hed import HEDNetwork
from ..controlnet.model import PixArtControlNet
from ..pixart.config import PixArtConfig
from ..pixart.convert import official_to_diffusers

#: What `write_tiny_controlnets` writes: the official combined .pth (base model + branch), the branch alone with
#: official keys (.pth, .safetensors), and diffusers' research layout (folder with config.json, single file).
CONTROLNET_NAMES = ("official-combined.pth", "official.pth", "official.safetensors", "diffusers",
                    "diffusers.safetensors")
HED_MEAN_RGB = (122.7, 116.7, 104.0)  # a plausible learned `norm` (RGB mean on the 0..255 scale)


def _random(shape: tuple[int, ...], key: str, gen: torch.Generator) -> Tensor:
    """N(0, 1/fan_in) matrices, N(0, 0.02) biases, N(0, 1/C) modulation tables (as the tiny transformers)."""
    if key.endswith("bias"):
        std = 0.02
    elif key.endswith("scale_shift_table"):
        std = 1.0 / math.sqrt(shape[-1])
    else:
        std = 1.0 / math.sqrt(math.prod(shape[1:]))
    return torch.randn(shape, generator=gen) * std  # [*shape]


def random_controlnet_state_dict(cfg: PixArtConfig, num_blocks: int, seed: int = 0,
                                projection_scale: float = 1.0) -> dict[str, Tensor]:
    """Official-layout branch weights (`controlnet.{i}.*`) for a base model of config `cfg`; the before/after
    projections are scaled by `projection_scale` (trained ones grow from zero and stay small)."""
    gen = torch.Generator().manual_seed(seed)
    net = PixArtControlNet(cfg.hidden_size, cfg.num_heads, num_blocks, cfg.mlp_ratio, qk_norm=cfg.qk_norm,
                           device="meta")
    return {key: _random(tuple(t.shape), key, gen) * (projection_scale if "_proj." in key else 1.0)
            for key, t in net.state_dict().items()}


def controlnet_to_diffusers(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official branch keys -> diffusers' research layout (`controlnet_blocks.{i}.transformer_block.*` with the
    fused q/k/v split), every tensor its own contiguous copy."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        _, index, rest = key.split(".", 2)
        if rest.startswith("copied_block."):
            block_key = f"blocks.{index}.{rest[len('copied_block.'):]}"
            for diffusers_key, piece in official_to_diffusers({block_key: value}).items():
                inner = diffusers_key.split(".", 2)[2]  # drop 'transformer_blocks.{index}.'
                out[f"controlnet_blocks.{index}.transformer_block.{inner}"] = piece.clone().contiguous()
        else:
            out[f"controlnet_blocks.{index}.{rest}"] = value.clone().contiguous()
    return out


def diffusers_controlnet_config(num_blocks: int) -> dict:
    """config.json of diffusers' research `PixArtControlNetAdapterModel` (its only field is `num_layers`)."""
    return {"_class_name": "PixArtControlNetAdapterModel", "_diffusers_version": "0.30.0", "num_layers": num_blocks}


def write_controlnet(sd: dict[str, Tensor], name: str, path: Path, base_sd: dict[str, Tensor] | None = None) -> Path:
    """Write the branch `sd` (official keys) as the `CONTROLNET_NAMES` entry `name` at `path`.

    The combined file needs the official base weights `base_sd` (stored as `base_model.*`)."""
    if name == "official-combined.pth":
        if base_sd is None:
            raise ValueError("official-combined.pth needs the base model's weights (base_sd)")
        save_torch({"state_dict": {**{f"base_model.{k}": v for k, v in base_sd.items()}, **sd}}, path)
    elif name == "official.pth":
        save_torch({"state_dict": dict(sd)}, path)
    elif name == "official.safetensors":
        save_safetensors(sd, path)
    elif name == "diffusers":
        num_blocks = len({key.split(".")[1] for key in sd})
        write_json(diffusers_controlnet_config(num_blocks), path / "config.json")
        save_safetensors(controlnet_to_diffusers(sd), path / "diffusion_pytorch_model.safetensors", {"format": "pt"})
    elif name == "diffusers.safetensors":
        save_safetensors(controlnet_to_diffusers(sd), path)
    else:
        raise ValueError(f"unknown ControlNet fixture {name!r}; choose one of {', '.join(CONTROLNET_NAMES)}")
    return path


def write_tiny_controlnets(out_dir: Path | str, base_sd: dict[str, Tensor], cfg: PixArtConfig, num_blocks: int = 1,
                           seed: int = 0, projection_scale: float = 1.0) -> dict[str, Path]:
    """Every `CONTROLNET_NAMES` entry under `out_dir` for the base model `cfg` with weights `base_sd`; {name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = random_controlnet_state_dict(cfg, num_blocks, seed, projection_scale)
    return {name: write_controlnet(sd, name, out_dir / name, base_sd) for name in CONTROLNET_NAMES}


def write_random_hed(path: Path | str, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """A full-size `ControlNetHED.pth` (plain state dict, as lllyasviel/Annotators ships it) with random weights:
    N(0, 1/fan_in) convolutions keep the activations of 0..255 images finite in fp16."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in HEDNetwork().state_dict().items()}
    state = {}
    for key, shape in shapes.items():
        if key == "norm":
            value = torch.tensor(HED_MEAN_RGB).reshape(shape)  # [1, 3, 1, 1]
        elif key.endswith("bias"):
            value = torch.randn(shape, generator=gen) * 0.01
        else:
            value = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))  # [out, in, k, k]
        state[key] = value.to(dtype)
    save_torch(state, path)
    return Path(path)


def write_controlnet_testbed(out_dir: Path | str, depth: int = 4, block_counts: tuple[int, ...] = (2, 3),
                             seed: int = 0) -> tuple[PixArtConfig, dict[str, Path]]:
    """A tiny α-1024-MS base deep enough for several control blocks, and ControlNets for it.

    Writes `base.pth` (official), `base-diffusers/` (diffusers folder) and, for each n in `block_counts`,
    `{n}-blocks/<CONTROLNET_NAMES entry>`; returns (base config, {relative name: path})."""
    from .transformers import random_official_state_dict, tiny_transformer_config, write_diffusers_folder

    out_dir = Path(out_dir)
    cfg = tiny_transformer_config("alpha-1024-ms").with_(depth=depth)
    base = random_official_state_dict(cfg, seed)
    paths = {"base.pth": out_dir / "base.pth", "base-diffusers": out_dir / "base-diffusers"}
    save_torch({"state_dict": base}, paths["base.pth"])
    write_diffusers_folder(base, cfg, paths["base-diffusers"])
    for count in block_counts:
        for name, path in write_tiny_controlnets(out_dir / f"{count}-blocks", base, cfg, count, seed + count).items():
            paths[f"{count}-blocks/{name}"] = path
    return cfg, paths
