"""The shapes world as a test fixture: the trained tiny PixArt, its ControlNet, and scenes with known truth.

The pipeline folder is `tests/fixtures/shapes_world/` (written by `tools/train_shapes_world.py`). Tests ask
behaviour of it, not arithmetic: a named shape lands at its named place, a matte finds the subject, a region
prompt lands in its box. Held-out scenes come from seeds the training never saw
(`shapes_data.held_out_seeds`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .shapes_data import Scene, edge_map, held_out_seeds, make_scene, single_shape_scene

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "shapes_world"
SIZE = 128
STEPS = 20
GUIDANCE = 2.0  # the world's CFG scale: 4.5 (PixArt's) over-drives this tiny DiT into mixed shades (sweep: RESULTS.md)
SAMPLER = "euler_ancestral"  # a stochastic sampler commits to one colour where DPM-Solver++ blends two (RESULTS.md)


def fixture_dir(folder: str | Path | None = None) -> Path:
    """The pipeline folder (default: the committed fixture); a clear error when it is missing."""
    path = Path(folder) if folder is not None else FIXTURE_DIR
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"no shapes-world pipeline at {path}; run tools/train_shapes_world.py --out {path}")
    return path


@lru_cache(maxsize=2)
def load_pipeline(folder: str | None = None):
    """`PixArtPipeline` of the shapes world on the CPU in float32 (cached per folder)."""
    from ..pipeline import PixArtPipeline

    return PixArtPipeline.from_pretrained(fixture_dir(folder))


@lru_cache(maxsize=2)
def load_world_controlnet(folder: str | None = None):
    """The edge-map ControlNet trained on the shapes world's frozen DiT."""
    from ..controlnet.load import load_controlnet

    return load_controlnet(fixture_dir(folder) / "controlnet", dtype=torch.float32)


def held_out_scenes(count: int, single: bool = False, size: int = SIZE) -> list[Scene]:
    """`count` scenes from seeds never trained on; `single` gives one shape each (transparency tests)."""
    build = single_shape_scene if single else make_scene
    return [build(seed, size) for seed in held_out_seeds(count)]


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in 0..1 -> uint8 [B, H, W, 3]."""
    return (pixels.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def control_tensor(scene: Scene) -> torch.Tensor:
    """The scene's edge map as a control image [1, 3, H, W] in 0..1."""
    return torch.from_numpy(edge_map(scene)).permute(2, 0, 1)[None].float() / 255.0  # [1, 3, H, W]


def generate(pipe, prompts: str | list[str], seed: int = 0, *, steps: int = STEPS, guidance: float = GUIDANCE,
             sampler: str = SAMPLER, size: int = SIZE, **kwargs) -> np.ndarray:
    """Images for `prompts` (one each) at `size`, seeded: uint8 [B, H, W, 3]. Extra keyword arguments go to the
    pipeline (e.g. controlnet=..., control_image=...)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    pixels = pipe(prompts, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                  sampler=sampler, use_resolution_binning=False, output_type="pt", seed=seed, **kwargs)  # [B, 3, H, W]
    return to_uint8(pixels)


def word_token_positions(tokenizer, prompt: str, words: list[str], start: int = 0) -> list[int]:
    """Positions in the tokenized `prompt` of the pieces of `words` (in order, from token `start`): the caption
    columns whose attention shows where those words were drawn."""
    ids = tokenizer.encode(prompt.lower().strip())
    positions: list[int] = []
    cursor = start
    for word in words:
        piece = tokenizer.encode(word)[:-1]  # without </s>
        for at in range(cursor, len(ids) - len(piece) + 1):
            if ids[at:at + len(piece)] == piece:
                positions.extend(range(at, at + len(piece)))
                cursor = at + len(piece)
                break
        else:
            raise ValueError(f"{word!r} is not in the tokenized prompt {prompt!r}")
    return positions
