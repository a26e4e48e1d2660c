"""The shapes world's figures: what the trained tiny PixArt must reach (issue figures, and the behaviour tests).

- text to image: over held-out prompts, each named shape of the named colour at its named place
  (`shapes_judge.judge_scene`: colour-mask centroid in the place's cell, area 0.4-2.5x the truth), and the
  background right;
- attention: the upsampled cross-attention of a shape's words (colour and shape name), thresholded at half its
  maximum, against the mask of that shape as drawn (its colour segmentation; the plain backgrounds make it
  reliable): IoU;
- ControlNet: with a held-out layout's edge map, each generated shape's colour mask against the layout's mask: IoU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .shapes_data import PLACES, ShapeSpec, render
from .shapes_judge import colour_mask, judge_scene, mask_iou
from .shapes_world import (GUIDANCE, SAMPLER, SIZE, STEPS, control_tensor, generate, held_out_scenes,
                           word_token_positions)

ATTENTION_THRESHOLD = 0.5  # of the map's maximum


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def text_to_image_figures(pipe, count: int = 50, batch: int = 10, seed: int = 0) -> dict:
    """{'prompts': share with every shape right, 'shapes': share of shapes right, 'backgrounds': share right}."""
    scenes = held_out_scenes(count)
    prompts_ok, shapes_ok, shapes_total, backgrounds_ok = 0, 0, 0, 0
    for start, chunk in _batches(scenes, batch):
        images = generate(pipe, [s.prompt for s in chunk], seed=seed + start)
        for image, scene in zip(images, chunk):
            verdict = judge_scene(image, scene)
            prompts_ok += bool(verdict["all_found"])
            shapes_ok += sum(bool(s["found"]) for s in verdict["shapes"])
            shapes_total += len(scene.shapes)
            backgrounds_ok += bool(verdict["background_ok"])
    return {"prompts": prompts_ok / count, "shapes": shapes_ok / shapes_total, "backgrounds": backgrounds_ok / count,
            "count": count}


def attention_mask(probabilities: torch.Tensor, positions: list[int], grid_hw: tuple[int, int],
                   size: int = SIZE) -> np.ndarray:
    """bool [size, size]: the attention of caption columns `positions` ([N, L] probabilities of one image),
    summed, upsampled bilinearly and thresholded at ATTENTION_THRESHOLD of its maximum."""
    grid = probabilities[:, positions].sum(dim=1).reshape(1, 1, *grid_hw).float()  # [1, 1, h, w]
    up = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0, 0]  # [S, S]
    return (up >= ATTENTION_THRESHOLD * up.max()).cpu().numpy()


def attention_figures(pipe, count: int = 30, batch: int = 10, seed: int = 0) -> dict:
    """Mean IoU of each drawn shape's attention mask with its colour mask (shapes that were drawn only)."""
    scenes = held_out_scenes(count)
    ious: list[float] = []
    for start, chunk in _batches(scenes, batch):
        with pipe.transformer.capture_attention() as capture:
            images = generate(pipe, [s.prompt for s in chunk], seed=seed + start)
        probabilities = capture.cross_attention()[-len(chunk):]  # [B, N, L]: the conditional rows (last, with CFG)
        for row, (image, scene) in enumerate(zip(images, chunk)):
            cursor = 0
            for spec in scene.shapes:
                positions = word_token_positions(pipe.tokenizer, scene.prompt, [spec.colour, spec.shape], cursor)
                cursor = positions[-1] + 1
                drawn = colour_mask(image, spec.colour)
                if drawn.sum() < 20:
                    continue
                ious.append(mask_iou(attention_mask(probabilities[row], positions, capture.grid_hw), drawn))
    return {"iou": float(np.mean(ious)) if ious else 0.0, "shapes": len(ious), "count": count}


def controlnet_figures(pipe, controlnet, count: int = 30, batch: int = 10, seed: int = 0) -> dict:
    """Mean IoU of generated shapes' colour masks with the held-out layouts' masks (edge map + prompt)."""
    scenes = held_out_scenes(count)
    ious: list[float] = []
    for start, chunk in _batches(scenes, batch):
        controls = torch.cat([control_tensor(s) for s in chunk])  # [B, 3, S, S]
        images = generate(pipe, [s.prompt for s in chunk], seed=seed + start, controlnet=controlnet,
                          control_image=controls)
        for image, scene in zip(images, chunk):
            for spec, truth in zip(scene.shapes, scene.masks):
                ious.append(mask_iou(colour_mask(image, spec.colour), truth >= 0.5))
    return {"iou": float(np.mean(ious)), "shapes": len(ious), "count": count}


def transparency_scenes(count: int, size: int = SIZE) -> list:
    """Held-out single-shape scenes posed for transparency: the seed's shape and colour, in the centre, on white
    (the subject Alfie-style generation centres on a plain background)."""
    scenes = []
    for scene in held_out_scenes(count * 2, single=True, size=size):
        spec = scene.shapes[0]
        if spec.colour == "white":
            continue  # a white subject on the white background it is cut from has no edge to find
        cx, cy = (f * size for f in PLACES["centre"])
        scenes.append(render("white", [ShapeSpec(spec.shape, spec.colour, "centre", cx, cy, spec.radius)], size))
        if len(scenes) == count:
            break
    return scenes


def transparency_figures(pipe, count: int = 30, seed: int = 0) -> dict:
    """Alfie-style generation (`pixart_core.rgba.alfie.generate_transparent`) on held-out single shapes: IoU of
    alpha >= 0.5 with the drawn shape's colour mask, and the mean absolute alpha error against that mask."""
    from ..rgba.alfie import generate_transparent

    scenes = transparency_scenes(count)
    ious, errors = [], []
    for index, scene in enumerate(scenes):
        result = generate_transparent(pipe, scene.prompt, negative_prompt="", height=SIZE, width=SIZE,
                                      num_inference_steps=STEPS, guidance_scale=GUIDANCE, sampler=SAMPLER,
                                      seed=seed + index, use_resolution_binning=False)
        image = (result.image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()  # [H, W, 3]
        alpha = result.alpha[0, 0].numpy()  # [H, W]
        drawn = colour_mask(image, scene.shapes[0].colour)
        ious.append(mask_iou(alpha >= 0.5, drawn))
        errors.append(float(np.abs(alpha - drawn.astype(np.float32)).mean()))
    return {"iou": float(np.mean(ious)), "mae": float(np.mean(errors)), "count": len(scenes)}
