"""Shapes world data: procedural 128² scenes of coloured shapes with known truth (issue #8).

Each scene is drawn reproducibly from an integer seed: 1–3 shapes (circle, square, triangle, star, ring) in
named colours at named places on a plain or gradient background, with an English prompt, one soft coverage
mask per shape (occlusion applied), the shapes' pixel boxes, and an edge map for ControlNet training. Shape-free
scenes ("a plain grey background") teach the world what its background prompts draw alone.
Coordinates are continuous image coordinates: pixel ``i`` spans ``[i, i + 1)``, so a shape centred at ``cx``
has its mask centroid at pixel index ``cx - 0.5``. Needs only numpy and OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "ring")

#: Saturated, clearly distinct shape colours (sRGB, uint8).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 225),
    "yellow": (250, 220, 20),
    "purple": (150, 30, 170),
    "orange": (250, 130, 10),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}

GRADIENT_TOP = (255, 218, 185)  # pale peach
GRADIENT_BOTTOM = (225, 215, 250)  # pale lavender

#: Background name -> its colour; "gradient" is a vertical blend from GRADIENT_TOP to GRADIENT_BOTTOM.
BACKGROUNDS: dict[str, tuple[int, int, int] | None] = {
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "black": (0, 0, 0),
    "sky blue": (135, 206, 235),
    "gradient": None,
}

#: Place key -> (cx, cy) as fractions of the image size.
PLACES: dict[str, tuple[float, float]] = {
    "left": (0.2, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.2), "bottom": (0.5, 0.8), "centre": (0.5, 0.5),
    "top left": (0.2, 0.2), "top right": (0.8, 0.2), "bottom left": (0.2, 0.8), "bottom right": (0.8, 0.8),
}

PLACE_PHRASES: dict[str, str] = {
    "left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
    "centre": "in the centre", "top left": "at the top left", "top right": "at the top right",
    "bottom left": "at the bottom left", "bottom right": "at the bottom right",
}

BACKGROUND_PHRASES: dict[str, str] = {
    "white": "on a white background", "grey": "on a grey background", "black": "on a black background",
    "sky blue": "on a sky blue background", "gradient": "on a soft gradient background",
}

#: Prompts of shape-free scenes ("a plain white background"): the prompt transparent generation gives its
#: background branch (pixart_core.rgba.alfie.BACKGROUND_PROMPT) and layouts give their background layer.
PLAIN_PROMPTS: dict[str, str] = {name: f"a plain {'soft gradient' if name == 'gradient' else name} background"
                                 for name in BACKGROUNDS}

TRAIN_SEEDS = range(0, 1_000_000)
HELD_OUT_START = 10_000_000  # held-out seeds start here, far from TRAIN_SEEDS

SHAPE_COUNT_WEIGHTS = (0.5, 0.3, 0.2)  # P(1 shape), P(2), P(3)
REFERENCE_SIZE = 128  # radius and jitter below are in pixels at this size and scale with the image
RADIUS_RANGE = (15.0, 20.0)  # shapes span 2-3 DiT tokens (16 px each at 128²), so attention can outline them
JITTER = 3.0
MIN_BACKGROUND_DELTA_E = 40.0  # a shape colour closer than this (CIE76, Lab) to the background is not used
SUPERSAMPLE = 4  # coverage = fraction of 4×4 sub-pixel samples inside the shape
RING_INNER = 0.5  # ring inner radius / outer radius
STAR_INNER = 0.5  # star inner vertex radius / outer radius
TRIANGLE_SCALE = 1.15  # triangle circumradius / radius (so its area is closer to the circle's)
SQUARE_SCALE = 0.9  # square half side / radius


@dataclass(frozen=True)
class ShapeSpec:
    """One shape: kind, colour name, place key, centre (continuous pixel coordinates) and radius in pixels."""

    shape: str
    colour: str
    place: str
    cx: float
    cy: float
    radius: float


@dataclass
class Scene:
    """A rendered scene with its truth.

    image: uint8 [S, S, 3]; masks: float32 [K, S, S], the visible coverage 0..1 of each shape after later
    shapes are drawn on top; boxes: (x0, y0, x1, y1) of each visible mask, x1/y1 exclusive.
    """

    prompt: str
    background: str
    shapes: list[ShapeSpec]
    image: np.ndarray
    masks: np.ndarray
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.image.shape[0])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 [..., 3] -> CIE Lab float32 [..., 3] (L in 0..100), via OpenCV."""
    arr = np.asarray(rgb, dtype=np.float32).reshape(-1, 1, 3) / 255.0  # [N, 1, 3]
    return cv2.cvtColor(arr, cv2.COLOR_RGB2Lab).reshape(np.shape(rgb))


def background_image(background: str, size: int = 128) -> np.ndarray:
    """The background alone, uint8 [S, S, 3]."""
    if background not in BACKGROUNDS:
        raise ValueError(f"background {background!r} is unknown; use one of {sorted(BACKGROUNDS)}")
    colour = BACKGROUNDS[background]
    if colour is not None:
        return np.broadcast_to(np.array(colour, np.uint8), (size, size, 3)).copy()
    t = (np.arange(size, dtype=np.float32) / max(size - 1, 1))[:, None]  # [S, 1]
    rows = (1 - t) * np.array(GRADIENT_TOP, np.float32) + t * np.array(GRADIENT_BOTTOM, np.float32)  # [S, 3]
    return np.broadcast_to(np.round(rows)[:, None, :], (size, size, 3)).astype(np.uint8)


def background_reference_colours(background: str) -> list[tuple[int, int, int]]:
    """Colours a background shows: its colour, or five samples down the gradient."""
    colour = BACKGROUNDS[background]
    if colour is not None:
        return [colour]
    top, bottom = np.array(GRADIENT_TOP, np.float32), np.array(GRADIENT_BOTTOM, np.float32)
    return [tuple(int(v) for v in np.round((1 - t) * top + t * bottom)) for t in np.linspace(0, 1, 5)]


def allowed_colours(background: str) -> list[str]:
    """Shape colours at least MIN_BACKGROUND_DELTA_E (Lab) away from every colour of the background."""
    refs = rgb_to_lab(np.array(background_reference_colours(background), np.uint8))  # [R, 3]
    names = list(COLOURS)
    labs = rgb_to_lab(np.array([COLOURS[n] for n in names], np.uint8))  # [C, 3]
    gaps = np.linalg.norm(labs[:, None, :] - refs[None, :, :], axis=-1).min(axis=1)  # [C]
    return [n for n, gap in zip(names, gaps) if gap >= MIN_BACKGROUND_DELTA_E]


def extent(spec: ShapeSpec) -> float:
    """Radius of a circle about the centre that holds the whole shape."""
    return spec.radius * (TRIANGLE_SCALE if spec.shape == "triangle" else 1.0)


def sample_specs(rng: np.random.Generator, size: int = 128, max_shapes: int = 3) -> tuple[str, list[ShapeSpec]]:
    """Draw a background and 1..max_shapes shapes at distinct places in distinct colours visible on it."""
    if not 1 <= max_shapes <= len(SHAPE_COUNT_WEIGHTS):
        raise ValueError(f"max_shapes={max_shapes} must be 1..{len(SHAPE_COUNT_WEIGHTS)}")
    scale = size / REFERENCE_SIZE
    background = str(rng.choice(list(BACKGROUNDS)))
    weights = np.array(SHAPE_COUNT_WEIGHTS[:max_shapes])
    count = int(rng.choice(np.arange(1, max_shapes + 1), p=weights / weights.sum()))
    places = [str(p) for p in rng.choice(list(PLACES), size=count, replace=False)]
    colours = [str(c) for c in rng.choice(allowed_colours(background), size=count, replace=False)]
    kinds = [str(s) for s in rng.choice(SHAPES, size=count)]
    radii = rng.uniform(*RADIUS_RANGE, size=count) * scale
    for _ in range(20):  # jitter the centres, redrawing when two shapes would touch
        jitter = rng.uniform(-JITTER, JITTER, size=(count, 2)) * scale
        specs = [ShapeSpec(kinds[i], colours[i], places[i], PLACES[places[i]][0] * size + float(jitter[i, 0]),
                           PLACES[places[i]][1] * size + float(jitter[i, 1]), float(radii[i]))
                 for i in range(count)]
        if all(np.hypot(a.cx - b.cx, a.cy - b.cy) >= extent(a) + extent(b)
               for i, a in enumerate(specs) for b in specs[i + 1:]):
            return background, specs
    specs = [ShapeSpec(kinds[i], colours[i], places[i], PLACES[places[i]][0] * size,
                       PLACES[places[i]][1] * size, float(radii[i])) for i in range(count)]
    return background, specs


def _polygon_inside(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of sample points x, y [...] against vertices [V, 2]."""
    inside = np.zeros(x.shape, bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def _star_vertices(spec: ShapeSpec) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5  # first point straight up
    radii = np.where(np.arange(10) % 2 == 0, spec.radius, spec.radius * STAR_INNER)
    return np.stack([spec.cx + radii * np.cos(angles), spec.cy + radii * np.sin(angles)], axis=1)  # [10, 2]


def _triangle_vertices(spec: ShapeSpec) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3  # apex up, centroid at the centre
    r = spec.radius * TRIANGLE_SCALE
    return np.stack([spec.cx + r * np.cos(angles), spec.cy + r * np.sin(angles)], axis=1)  # [3, 2]


def _inside(spec: ShapeSpec, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    dx, dy = x - spec.cx, y - spec.cy
    r = spec.radius
    if spec.shape == "circle":
        return dx * dx + dy * dy < r * r
    if spec.shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 < r * r) & (d2 >= (RING_INNER * r) ** 2)
    if spec.shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) < SQUARE_SCALE * r
    if spec.shape == "triangle":
        return _polygon_inside(x, y, _triangle_vertices(spec))
    if spec.shape == "star":
        return _polygon_inside(x, y, _star_vertices(spec))
    raise ValueError(f"shape {spec.shape!r} is unknown; use one of {SHAPES}")


def coverage(spec: ShapeSpec, size: int = 128) -> np.ndarray:
    """Anti-aliased coverage of one shape alone, float32 [S, S] in 0..1: 4×4 supersampling (exact area for squares)."""
    out = np.zeros((size, size), np.float32)
    reach = extent(spec) + 2
    x0, x1 = max(int(np.floor(spec.cx - reach)), 0), min(int(np.ceil(spec.cx + reach)), size)
    y0, y1 = max(int(np.floor(spec.cy - reach)), 0), min(int(np.ceil(spec.cy + reach)), size)
    if x1 <= x0 or y1 <= y0:
        return out
    if spec.shape == "square":  # exact area, so pixel-aligned sides still get soft edges
        half = SQUARE_SCALE * spec.radius
        px, py = np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64)
        wx = np.clip(np.minimum(px + 1, spec.cx + half) - np.maximum(px, spec.cx - half), 0, 1)  # [W]
        wy = np.clip(np.minimum(py + 1, spec.cy + half) - np.maximum(py, spec.cy - half), 0, 1)  # [H]
        out[y0:y1, x0:x1] = wy[:, None] * wx[None, :]
        return out
    n = SUPERSAMPLE
    xs = x0 + (np.arange((x1 - x0) * n) + 0.5) / n  # sub-pixel sample centres
    ys = y0 + (np.arange((y1 - y0) * n) + 0.5) / n
    grid_x, grid_y = np.meshgrid(xs, ys)  # [H*n, W*n] each
    inside = _inside(spec, grid_x, grid_y).astype(np.float32)  # [H*n, W*n]
    out[y0:y1, x0:x1] = inside.reshape(y1 - y0, n, x1 - x0, n).mean(axis=(1, 3))
    return out


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends, of the pixels where mask > 0; (0, 0, 0, 0) when empty."""
    ys, xs = np.nonzero(mask > 0)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def render(background: str, specs: list[ShapeSpec], size: int = 128) -> Scene:
    """Composite the shapes in order (later on top) over the background; masks are the visible coverage."""
    image = background_image(background, size).astype(np.float32)  # [S, S, 3]
    covers = [coverage(spec, size) for spec in specs]
    for spec, cover in zip(specs, covers):
        if spec.colour not in COLOURS:
            raise ValueError(f"colour {spec.colour!r} is unknown; use one of {sorted(COLOURS)}")
        colour = np.array(COLOURS[spec.colour], np.float32)
        image = image * (1 - cover[..., None]) + colour * cover[..., None]
    visible = []
    for k, cover in enumerate(covers):
        mask = cover.copy()
        for later in covers[k + 1:]:
            mask *= 1 - later
        visible.append(mask)
    masks = np.stack(visible) if visible else np.zeros((0, size, size), np.float32)  # [K, S, S]
    return Scene(prompt=prompt_for(background, specs), background=background, shapes=list(specs),
                 image=np.clip(np.round(image), 0, 255).astype(np.uint8), masks=masks.astype(np.float32),
                 boxes=[mask_box(m) for m in masks])


def describe(spec: ShapeSpec) -> str:
    """The phrase for one shape, e.g. 'a red circle on the left'."""
    return f"a {spec.colour} {spec.shape} {PLACE_PHRASES[spec.place]}"


def prompt_for(background: str, specs: list[ShapeSpec]) -> str:
    """The scene's prompt, e.g. 'a red circle on the left, a green ring at the top and a blue star at the bottom
    right, on a grey background' (one shape: no 'and'; two: 'X and Y'; none: 'a plain grey background')."""
    if not specs:
        return PLAIN_PROMPTS[background]
    parts = [describe(s) for s in specs]
    shapes = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{shapes}, {BACKGROUND_PHRASES[background]}"


def make_scene(seed: int, size: int = 128) -> Scene:
    """The scene of a seed (1–3 shapes), the same on every call."""
    background, specs = sample_specs(np.random.default_rng(seed), size)
    return render(background, specs, size)


def plain_scene(seed: int, size: int = 128) -> Scene:
    """A scene of the background alone (no shapes, prompt from PLAIN_PROMPTS), from its own stream of the seed."""
    background = str(np.random.default_rng([seed, 2]).choice(list(BACKGROUNDS)))
    return render(background, [], size)


def single_shape_scene(seed: int, size: int = 128) -> Scene:
    """A scene with exactly one shape, from its own stream of the seed."""
    background, specs = sample_specs(np.random.default_rng([seed, 1]), size, max_shapes=1)
    return render(background, specs, size)


def held_out_seeds(count: int) -> list[int]:
    """Seeds never drawn in training (disjoint from TRAIN_SEEDS)."""
    return [HELD_OUT_START + i for i in range(count)]


def edge_map(scene: Scene) -> np.ndarray:
    """White edges (about 2 px) of every shape's visible mask on black, uint8 [S, S, 3]: a ControlNet hint."""
    kernel = np.ones((3, 3), np.uint8)
    edges = np.zeros(scene.image.shape[:2], np.uint8)
    for mask in scene.masks:
        binary = (mask >= 0.5).astype(np.uint8)
        edges |= cv2.morphologyEx(binary, cv2.MORPH_GRADIENT, kernel)
    return np.repeat((edges * 255)[..., None], 3, axis=2)


def edge_map_of_specs(background: str, specs: list[ShapeSpec], size: int = 128) -> np.ndarray:
    """edge_map of the scene these specs render to."""
    return edge_map(render(background, specs, size))
