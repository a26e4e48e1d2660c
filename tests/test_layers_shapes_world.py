"""Layered generation in the shapes world (issue #10, item 8): over 20 held-out layouts of 2-4 boxes, each a
shape prompt, the shapes land in their boxes, each layer's alpha covers its shape, and regenerating a layer with
another colour changes that layer's colour and no other layer's pixels. The committed fixture
(tests/fixtures/shapes_world) reaches the first; it is short of the alpha of every layer and of the recolouring:
those are strict xfails, with floors measured on the fixture against regressions; that other layers keep their
pixels holds exactly."""

from __future__ import annotations

import numpy as np
import pytest

from pixart_core.testing import shapes_world as world
from pixart_core.testing.shapes_data import PLAIN_PROMPTS, allowed_colours, describe, extent
from pixart_core.testing.shapes_judge import colour_mask, mask_iou

LAYOUTS = 20
BOX_MARGIN = 1.3  # box half side = the shape's extent times this
INSIDE_SHARE, LAYER_SHARE, ALPHA_IOU = 0.8, 0.8, 0.7


def layout_of(scene) -> dict:
    """The scene's shapes as layers, each in a box around the shape, bottom to top in drawing order; the
    background layer's prompt is the world's shape-free one ("a plain grey background")."""
    size = scene.size
    layers = []
    for index, spec in enumerate(scene.shapes):
        half = extent(spec) * BOX_MARGIN
        box = [max(0, int(spec.cx - half)), max(0, int(spec.cy - half)), min(size, int(np.ceil(spec.cx + half))),
               min(size, int(np.ceil(spec.cy + half)))]
        layers.append({"name": f"shape {index}", "prompt": describe(spec), "box": box})
    return {"width": size, "height": size, "prompt": scene.prompt,
            "background": {"prompt": PLAIN_PROMPTS[scene.background]}, "layers": layers}


@pytest.fixture(scope="module")
def scenes(world_dir):
    """20 held-out scenes with 2 or more shapes."""
    picked = [scene for scene in world.held_out_scenes(6 * LAYOUTS) if len(scene.shapes) >= 2][:LAYOUTS]
    assert len(picked) == LAYOUTS
    return picked


@pytest.fixture(scope="module")
def generated(world_pipe, scenes):
    return [world_pipe.generate_layers(layout_of(scene), seed=index, num_inference_steps=world.STEPS,
                                       guidance_scale=world.GUIDANCE, sampler=world.SAMPLER)
            for index, scene in enumerate(scenes)]


def box_region(box, size: int) -> np.ndarray:
    inside = np.zeros((size, size), bool)
    inside[int(box[1]):int(np.ceil(box[3])), int(box[0]):int(np.ceil(box[2]))] = True
    return inside


def visible_alphas(stack) -> list[np.ndarray]:
    """Each foreground's alpha times what the layers above leave visible, [H, W] in 0..1."""
    alphas = [np.asarray(layer.image, np.float64)[..., 3] / 255.0 for layer in stack.layers[1:]]
    out = []
    for index, alpha in enumerate(alphas):
        for upper in alphas[index + 1:]:
            alpha = alpha * (1 - upper)
        out.append(alpha)
    return out


SHORT_OF_TARGET = ("issue #10 item 8 open: what the committed shapes world's DiT draws is short of this target "
                   "(README of tests/fixtures/shapes_world)")


@pytest.fixture(scope="module")
def placed(scenes, generated):
    """Per foreground layer: is >= INSIDE_SHARE of its colour mask inside its box, and its alpha's IoU with it."""
    inside_ok, ious = [], []
    for scene, stack in zip(scenes, generated):
        image = np.asarray(stack.composite)
        for spec, layer, alpha in zip(scene.shapes, stack.layers[1:], visible_alphas(stack)):
            mask = colour_mask(image, spec.colour)
            region = box_region(layer.box, scene.size)
            inside_ok.append(mask.sum() > 0 and (mask & region).sum() >= INSIDE_SHARE * mask.sum())
            ious.append(mask_iou(alpha > 0.5, mask & region))
    return np.array(inside_ok), np.array(ious)


@pytest.fixture(scope="module")
def regenerated(world_pipe, scenes, generated):
    """(scene, old stack, new stack, old colour, new colour) for every layout, layer 1 recoloured."""
    out = []
    for index, (scene, stack) in enumerate(zip(scenes, generated)):
        spec = scene.shapes[0]
        used = {shape.colour for shape in scene.shapes}
        colour = next(c for c in allowed_colours(scene.background) if c not in used)
        prompt = describe(type(spec)(spec.shape, colour, spec.place, spec.cx, spec.cy, spec.radius))
        new = world_pipe.regenerate_layer(stack, 1, prompt=prompt, seed=100 + index,
                                          num_inference_steps=world.STEPS, guidance_scale=world.GUIDANCE,
                                          sampler=world.SAMPLER)
        out.append((scene, stack, new, spec.colour, colour))
    return out


def test_layers_hold_the_fixtures_figures(placed):
    inside_ok, ious = placed
    assert len(inside_ok) >= 40  # 20 layouts of 2-3 shapes
    assert ious.mean() >= 0.72, f"mean alpha IoU with the colour masks {ious.mean():.2f}"  # measured 0.754


def test_shapes_land_in_their_boxes(placed):
    inside_ok, _ = placed
    assert inside_ok.mean() >= LAYER_SHARE, f"{inside_ok.mean():.2f} of the layers inside their boxes"  # measured 0.96


@pytest.mark.xfail(strict=True, reason=SHORT_OF_TARGET + "; measured: 72% of the layers at IoU >= 0.7, min 0.00 "
                   "(shapes drawn in two shades the colour mask cuts; alphas spilling into a touching neighbour)")
def test_every_layers_alpha_covers_its_shape(placed):
    _, ious = placed
    assert ious.min() >= ALPHA_IOU, f"alpha IoU with the colour masks: min {ious.min():.2f}, mean {ious.mean():.2f}"


def test_regenerating_a_layer_leaves_every_other_layers_pixels(regenerated):
    for scene, stack, new, _, _ in regenerated:
        for position, (old, fresh) in enumerate(zip(stack.layers, new.layers)):
            if position != 1:
                assert np.array_equal(np.asarray(old.image), np.asarray(fresh.image)), (scene.prompt, old.name)


def recoloured(scene, stack, new, old_colour, colour) -> bool:
    """Does the regenerated layer's box show more of the new colour than of the old, and at least half as much
    as it showed of the old colour before?"""
    region = box_region(stack.layers[1].box, scene.size)
    before, after = np.asarray(stack.composite), np.asarray(new.composite)
    old_before = (colour_mask(before, old_colour) & region).sum()
    old_after = (colour_mask(after, old_colour) & region).sum()
    new_after = (colour_mask(after, colour) & region).sum()
    return bool(new_after > old_after and new_after >= 0.5 * old_before)


def test_regenerating_layers_recolours_them(regenerated):
    share = np.mean([recoloured(*item) for item in regenerated])
    assert share >= 0.9, f"{share:.2f} of the regenerated layers took the new colour"  # measured 0.95 (19 of 20)


@pytest.mark.xfail(strict=True, reason=SHORT_OF_TARGET + "; measured: 19 of 20 layouts recoloured their layer (the "
                   "11th layout's layer did not pass the recolour check)")
def test_regenerating_every_layer_with_another_colour_recolours_it(regenerated):
    for item in regenerated:
        assert recoloured(*item), item[0].prompt
