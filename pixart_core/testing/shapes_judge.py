"""Judge of shapes-world images: is each named shape of the named colour at its named place, on the right background?

Works on generated (imperfect) images as well as on the ground truth from `shapes_data`. Colours are compared
in CIE Lab (CIE76 distance, via OpenCV). Needs only numpy and OpenCV.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from .shapes_data import (BACKGROUNDS, COLOURS, PLACES, Scene, ShapeSpec, background_image,
                          background_reference_colours, rgb_to_lab)

COLOUR_TOLERANCE = 45.0  # default Lab distance a pixel may be from its nearest named colour and still count
BACKGROUND_TOLERANCE = 30.0  # mean Lab distance of the corners from the expected background
MIN_AREA_RATIO, MAX_AREA_RATIO = 0.4, 2.5
CORNER_FRACTION = 1 / 16  # corner patches are size/16 pixels square (8×8 at 128²)


def _references() -> tuple[list[str], np.ndarray]:
    """Labels and Lab colours of every reference: the palette plus the background colours not in it."""
    labels, colours = [], []
    for name, rgb in COLOURS.items():
        labels.append(name)
        colours.append(rgb)
    for background in BACKGROUNDS:
        for rgb in background_reference_colours(background):
            if rgb not in colours:
                labels.append(f"background:{background}")
                colours.append(rgb)
    return labels, rgb_to_lab(np.array(colours, np.uint8))  # [R, 3]


REFERENCE_LABELS, REFERENCE_LAB = _references()


def classify_colours(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference (index into REFERENCE_LABELS) of every pixel, int [S, S], and its Lab distance [S, S]."""
    lab = rgb_to_lab(np.ascontiguousarray(image[..., :3], dtype=np.uint8)).reshape(-1, 3)  # [N, 3]
    d2 = np.zeros((lab.shape[0], len(REFERENCE_LABELS)), np.float32)  # [N, R]
    for channel in range(3):  # per channel, no BLAS: fast and exact for 3-vectors
        d2 += (lab[:, channel, None] - REFERENCE_LAB[None, :, channel]) ** 2
    nearest = d2.argmin(axis=1)  # [N]
    dist = np.sqrt(d2[np.arange(len(nearest)), nearest])  # [N]
    return nearest.reshape(image.shape[:2]), dist.reshape(image.shape[:2])


def colour_mask(image: np.ndarray, colour_name: str, tol: float | None = None,
                classified: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """bool [S, S]: pixels whose nearest reference colour (palette + backgrounds, in Lab) is `colour_name`
    and that lie within `tol` (default COLOUR_TOLERANCE) of it. `classified` reuses `classify_colours(image)`."""
    if colour_name not in COLOURS:
        raise ValueError(f"colour_name {colour_name!r} is unknown; use one of {sorted(COLOURS)}")
    tol = COLOUR_TOLERANCE if tol is None else tol
    nearest, dist = classify_colours(image) if classified is None else classified
    return (nearest == REFERENCE_LABELS.index(colour_name)) & (dist <= tol)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks; 0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def nearest_place(x: float, y: float, size: int) -> str:
    """The place whose centre is closest to the continuous point (x, y)."""
    return min(PLACES, key=lambda p: (PLACES[p][0] * size - x) ** 2 + (PLACES[p][1] * size - y) ** 2)


def judge_shape(image: np.ndarray, spec: ShapeSpec, true_mask: np.ndarray, tol: float | None = None,
                classified: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Is `spec` drawn in `image`?

    Rule: take the largest 8-connected component of `colour_mask(image, spec.colour)`. The shape is found when
    (1) its centroid lies in the named place's cell, i.e. it is closer to `spec.place`'s centre than to any other
    place centre (cells are about 19 px wide on each side at 128²), and (2) its area is between 0.4× and 2.5× the
    true visible area (`true_mask.sum()`). The shape kind is not checked. Also reported: centroid_error_px (from
    the true mask's centroid), area_ratio, iou of the component with `true_mask >= 0.5`, and the component's
    nearest place. `classified` reuses `classify_colours(image)`.
    """
    size = image.shape[0]
    mask = colour_mask(image, spec.colour, tol, classified).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    true_mask = np.asarray(true_mask, np.float32)
    true_area = float(true_mask.sum())
    if count <= 1 or true_area <= 0:
        return dict(found=False, centroid_error_px=float("inf"), area_ratio=0.0, iou=0.0, place=None)
    best = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    component = labels == best
    cx, cy = (float(v) + 0.5 for v in centroids[best])  # pixel index -> continuous coordinates
    ys, xs = np.mgrid[0:size, 0:size]
    tx = float((true_mask * xs).sum() / true_area) + 0.5
    ty = float((true_mask * ys).sum() / true_area) + 0.5
    area_ratio = float(stats[best, cv2.CC_STAT_AREA]) / true_area
    place = nearest_place(cx, cy, size)
    found = place == spec.place and MIN_AREA_RATIO <= area_ratio <= MAX_AREA_RATIO
    return dict(found=bool(found), centroid_error_px=float(np.hypot(cx - tx, cy - ty)), area_ratio=area_ratio,
                iou=mask_iou(component, true_mask >= 0.5), place=place)


def _corner_colours(image: np.ndarray) -> np.ndarray:
    """Median RGB of the four corner patches (robust to a few shape pixels), float32 [4, 3]."""
    size = image.shape[0]
    n = max(2, int(round(size * CORNER_FRACTION)))
    patches = [image[:n, :n], image[:n, -n:], image[-n:, :n], image[-n:, -n:]]
    return np.array([np.median(p.reshape(-1, 3), axis=0) for p in patches], np.float32)


@functools.lru_cache(maxsize=None)
def _expected_corners(background: str, size: int) -> np.ndarray:
    """Lab colours of the corner patches of a bare background, float32 [4, 3]."""
    return rgb_to_lab(np.round(_corner_colours(background_image(background, size))).astype(np.uint8))


def background_scores(image: np.ndarray) -> dict[str, float]:
    """Each background's mean Lab distance from the image's corner patches, the worst corner dropped."""
    observed = rgb_to_lab(np.round(_corner_colours(image[..., :3])).astype(np.uint8))  # [4, 3]
    scores = {}
    for name in BACKGROUNDS:
        expected = _expected_corners(name, image.shape[0])  # [4, 3]
        dist = np.sort(np.linalg.norm(observed - expected, axis=-1))  # [4]
        scores[name] = float(dist[:-1].mean())
    return scores


def judge_background(image: np.ndarray, background: str, tol: float = BACKGROUND_TOLERANCE) -> bool:
    """True when `background` is the closest background to the corner patches and within `tol` of them.

    The gradient is told apart from plain colours by its corners: peach at the top, lavender at the bottom.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background {background!r} is unknown; use one of {sorted(BACKGROUNDS)}")
    scores = background_scores(image)
    return min(scores, key=scores.get) == background and scores[background] <= tol


def judge_scene(image: np.ndarray, scene: Scene) -> dict:
    """Judge `image` against the truth of `scene`: per-shape results, all_found, background_ok."""
    if image.shape[:2] != scene.image.shape[:2]:
        raise ValueError(f"image is {image.shape[:2]} but the scene is {scene.image.shape[:2]}; resize it first")
    classified = classify_colours(image)
    shapes = [judge_shape(image, spec, mask, classified=classified) for spec, mask in zip(scene.shapes, scene.masks)]
    return dict(shapes=shapes, all_found=all(s["found"] for s in shapes),
                background_ok=judge_background(image, scene.background))
