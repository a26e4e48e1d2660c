"""Shapes world data and judge (issue #8): reproducible scenes with exact truth, and a judge that tells them apart."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from pixart_core.testing.shapes_data import (BACKGROUNDS, COLOURS, JITTER, PLACE_PHRASES, PLACES, RADIUS_RANGE,
                                             SHAPES, TRAIN_SEEDS, allowed_colours, background_image, edge_map,
                                             edge_map_of_specs, held_out_seeds, make_scene, plain_scene, render,
                                             sample_specs, single_shape_scene)
from pixart_core.testing.shapes_judge import colour_mask, judge_background, judge_scene, mask_iou

SCENES = [make_scene(seed) for seed in range(200)]


def test_same_seed_gives_the_same_bytes():
    a, b = make_scene(1234), make_scene(1234)
    assert a.prompt == b.prompt and a.shapes == b.shapes and a.boxes == b.boxes
    assert a.image.tobytes() == b.image.tobytes() and a.masks.tobytes() == b.masks.tobytes()
    assert make_scene(1235).image.tobytes() != a.image.tobytes()


def test_held_out_seeds_are_never_training_seeds():
    held = held_out_seeds(500)
    assert len(set(held)) == 500
    assert not any(seed in TRAIN_SEEDS for seed in held)


def test_scenes_follow_the_vocabulary_and_rules():
    counts = {1: 0, 2: 0, 3: 0}
    for scene in SCENES:
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
        assert scene.masks.shape == (len(scene.shapes), 128, 128) and scene.masks.dtype == np.float32
        assert scene.background in BACKGROUNDS
        counts[len(scene.shapes)] += 1
        assert len({s.place for s in scene.shapes}) == len(scene.shapes)
        assert len({s.colour for s in scene.shapes}) == len(scene.shapes)
        for spec in scene.shapes:
            assert spec.shape in SHAPES and spec.colour in allowed_colours(scene.background)
            assert RADIUS_RANGE[0] <= spec.radius <= RADIUS_RANGE[1]
            px, py = PLACES[spec.place]
            assert abs(spec.cx - px * 128) <= JITTER and abs(spec.cy - py * 128) <= JITTER
    assert all(counts[k] > 20 for k in counts), counts
    assert "white" not in allowed_colours("white") and "black" not in allowed_colours("black")


def test_prompt_names_every_colour_shape_place_and_the_background():
    for scene in SCENES[:50]:
        for spec in scene.shapes:
            assert f"a {spec.colour} {spec.shape} {PLACE_PHRASES[spec.place]}" in scene.prompt
        assert scene.prompt.endswith(" background")
    three = next(s for s in SCENES if len(s.shapes) == 3)
    assert three.prompt.count(", a ") == 1 and three.prompt.count(" and a ") == 1
    bg, specs = "sky blue", [dataclasses.replace(SCENES[0].shapes[0], colour="red", shape="circle", place="left")]
    assert render(bg, specs).prompt == "a red circle on the left, on a sky blue background"
    assert render("gradient", specs).prompt.endswith("on a soft gradient background")


def test_masks_are_soft_coverage_and_boxes_hold_them():
    for scene in SCENES:
        assert scene.masks.min() >= 0 and scene.masks.max() <= 1
        assert scene.masks.sum(axis=0).max() <= 1 + 1e-5
        soft = (scene.masks > 0.02) & (scene.masks < 0.98)
        assert soft.any(), "edges should be anti-aliased"
        for mask, (x0, y0, x1, y1) in zip(scene.masks, scene.boxes):
            assert mask.sum() > 200
            inside = np.zeros_like(mask, bool)
            inside[y0:y1, x0:x1] = True
            assert mask[~inside].sum() == 0
            assert mask[y0, x0:x1].max() > 0 and mask[y1 - 1, x0:x1].max() > 0


def test_image_is_the_masks_painted_over_the_background():
    scene = SCENES[3]
    expected = background_image(scene.background).astype(np.float32) * (1 - scene.masks.sum(axis=0))[..., None]
    for spec, mask in zip(scene.shapes, scene.masks):
        expected += np.array(COLOURS[spec.colour], np.float32) * mask[..., None]
    assert np.abs(expected - scene.image.astype(np.float32)).max() <= 1.0


def test_edge_map_lies_on_the_shape_boundaries():
    for scene in SCENES[:40]:
        edges = edge_map(scene)
        assert edges.shape == (128, 128, 3) and edges.dtype == np.uint8
        on = edges[..., 0] > 0
        assert on.sum() > 50
        covered = scene.masks.sum(axis=0)
        deep_inside = covered > 0.999
        core = cv2.erode(deep_inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        far = cv2.dilate((covered > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
        assert not (on & core).any() and not (on & far).any()
        assert np.array_equal(edges, edge_map_of_specs(scene.background, scene.shapes))


def test_single_shape_scene_has_one_shape():
    for seed in range(20):
        scene = single_shape_scene(seed)
        assert len(scene.shapes) == 1 and scene.masks.shape == (1, 128, 128)
    assert single_shape_scene(5).image.tobytes() == single_shape_scene(5).image.tobytes()


def test_plain_scene_is_the_background_alone_with_alfies_background_prompt():
    from pixart_core.rgba.alfie import BACKGROUND_PROMPT

    scenes = [plain_scene(seed) for seed in range(40)]
    assert {scene.background for scene in scenes} == set(BACKGROUNDS)
    for scene in scenes:
        assert scene.shapes == [] and scene.masks.shape == (0, 128, 128) and scene.boxes == []
        assert np.array_equal(scene.image, background_image(scene.background))
        assert not edge_map(scene).any()
    white = next(scene for scene in scenes if scene.background == "white")
    assert white.prompt == BACKGROUND_PROMPT  # transparency's background branch is a prompt the world knows
    assert plain_scene(7).image.tobytes() == plain_scene(7).image.tobytes()


def test_judge_passes_the_ground_truth():
    results = [judge_scene(scene.image, scene) for scene in SCENES]
    passed = sum(r["all_found"] and r["background_ok"] for r in results)
    assert passed >= 0.99 * len(SCENES), passed
    for scene, result in zip(SCENES, results):
        for shape in result["shapes"]:
            if shape["found"]:
                assert shape["centroid_error_px"] < 1.5 and 0.8 < shape["area_ratio"] < 1.25 and shape["iou"] > 0.8


def test_judge_fails_a_shape_moved_to_another_place():
    for scene in SCENES[:40]:
        used = {s.place for s in scene.shapes}
        free = next(p for p in PLACES if p not in used)
        moved = dataclasses.replace(scene.shapes[0], place=free, cx=PLACES[free][0] * 128, cy=PLACES[free][1] * 128)
        image = render(scene.background, [moved, *scene.shapes[1:]]).image
        result = judge_scene(image, scene)
        assert not result["shapes"][0]["found"] and not result["all_found"]


def test_judge_fails_a_recoloured_shape():
    for scene in SCENES[:40]:
        used = {s.colour for s in scene.shapes}
        other = next(c for c in allowed_colours(scene.background) if c not in used)
        image = render(scene.background, [dataclasses.replace(scene.shapes[0], colour=other),
                                          *scene.shapes[1:]]).image
        assert not judge_scene(image, scene)["all_found"]


def test_judge_fails_a_blank_background_and_a_wrong_background():
    for scene in SCENES[:40]:
        result = judge_scene(background_image(scene.background), scene)
        assert result["background_ok"] and not result["all_found"]
        assert not any(s["found"] for s in result["shapes"])
        wrong = next(b for b in BACKGROUNDS if b != scene.background)
        assert not judge_background(background_image(wrong), scene.background)


@pytest.mark.parametrize("background", list(BACKGROUNDS))
def test_judge_background_tells_every_background_apart(background):
    image = background_image(background)
    assert judge_background(image, background)
    assert sum(judge_background(image, other) for other in BACKGROUNDS) == 1


def test_colour_mask_tolerates_noise_and_mask_iou():
    scene = SCENES[0]
    rng = np.random.default_rng(0)
    noisy = np.clip(scene.image.astype(np.int16) + rng.integers(-20, 21, scene.image.shape), 0, 255).astype(np.uint8)
    for spec, mask in zip(scene.shapes, scene.masks):
        assert mask_iou(colour_mask(noisy, spec.colour), mask >= 0.5) > 0.85
    assert judge_scene(noisy, scene)["all_found"] and judge_scene(noisy, scene)["background_ok"]
    a = np.zeros((4, 4), bool)
    a[:2] = True
    assert mask_iou(a, a) == 1.0 and mask_iou(a, ~a) == 0.0 and mask_iou(a & False, a & False) == 0.0
    with pytest.raises(ValueError, match="colour_name"):
        colour_mask(scene.image, "teal")


def test_sample_specs_scales_with_size_and_respects_max_shapes():
    background, specs = sample_specs(np.random.default_rng(7), size=256, max_shapes=1)
    assert len(specs) == 1 and 26 <= specs[0].radius <= 34
    assert make_scene(7, size=64).image.shape == (64, 64, 3)
