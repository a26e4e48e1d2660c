"""Procedural RGBA test scenes with known alpha, for the matte's tests and benchmark.

Each scene is a subject (alpha and straight foreground colour) composited over a background by alpha-over,
`image = alpha * foreground + (1 - alpha) * background`, plus a coarse hint like an attention map: the true alpha
area-downsampled to 1/16 of each side (the PixArt token grid: VAE /8, patch 2), blurred and given noise. All
randomness comes from one seed.

Subjects (sizes are fractions of the image side, so a scene looks the same at 128 and 1024 px, except the
strands, which stay 1-2 px wide like real hair):
    blob   soft-edged opaque blob (a disc with a wavy outline), edge softness 1-3 px
    hair   a smaller opaque head with thin anti-aliased strands (about 1-2 px wide) curling outwards
    ring   an opaque ring with a round hole, plus a disc with several holes
    glass  a semi-transparent shape, body alpha 0.3-0.7 with a gentle gradient and a denser rim (alpha 0.9)
Backgrounds: plain (a random colour), white, gradient (linear between two colours), noisy (a colour plus
Gaussian grain, sigma 0.03 per channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUBJECTS = ("blob", "hair", "ring", "glass")
BACKGROUNDS = ("plain", "white", "gradient", "noisy")
HINT_FACTOR = 16
HINT_BLUR_SIGMA = 0.8  # in hint pixels
HINT_NOISE = 0.05
NOISY_BACKGROUND_SIGMA = 0.03
MIN_COLOUR_DISTANCE = 0.35  # subject vs background colour (RGB Euclidean), so the matte has something to see


@dataclass
class RGBAScene:
    """One scene. Tensors are float32 in 0..1 without a batch dimension."""

    subject: str
    background_kind: str
    image: torch.Tensor  # [3, H, W] composite
    alpha: torch.Tensor  # [1, H, W] truth
    foreground: torch.Tensor  # [3, H, W] straight colour
    background: torch.Tensor  # [3, H, W]
    hint: torch.Tensor  # [1, H/16, W/16]
    background_colour: tuple[float, float, float] | None  # the colour when the background is flat, else None


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in pixels: y [H, W] and x [H, W]."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    return torch.meshgrid(coords, coords, indexing="ij")


def _uniform(gen: torch.Generator, low: float = 0.0, high: float = 1.0, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)  # [n]


def _coverage(signed_distance: torch.Tensor, softness: float) -> torch.Tensor:
    """Alpha from a signed distance in pixels (positive inside): a linear ramp `softness` px wide."""
    return (signed_distance / max(softness, 1.0) + 0.5).clamp(0, 1)


def _wavy_disc(y, x, cy, cx, radius, gen, waves: int = 4, amount: float = 0.12) -> torch.Tensor:
    """Signed distance (approximate, px) to a disc whose radius wobbles with a few Fourier terms."""
    angle = torch.atan2(y - cy, x - cx)  # [H, W]
    wobble = torch.zeros_like(angle)
    for k in range(2, 2 + waves):
        wobble += amount / k * torch.cos(k * angle + float(_uniform(gen, 0, 2 * math.pi)))
    return radius * (1 + wobble) - torch.hypot(y - cy, x - cx)  # [H, W]


def _strand_alpha(size: int, head: tuple[float, float, float], gen: torch.Generator, count: int) -> torch.Tensor:
    """Thin curved strands from the head's outline outwards, anti-aliased by distance to each segment."""
    cy, cx, radius = head
    alpha = torch.zeros(size, size)  # [H, W]
    segments = 14
    for _ in range(count):
        angle = float(_uniform(gen, 0, 2 * math.pi))
        length = radius * float(_uniform(gen, 0.5, 1.0))
        curl = float(_uniform(gen, -1.2, 1.2)) / length
        width = float(_uniform(gen, 0.9, 2.0))
        py, px = cy + 0.85 * radius * math.sin(angle), cx + 0.85 * radius * math.cos(angle)
        heading, step = angle, length / segments
        for _ in range(segments):
            heading += curl * step
            qy, qx = py + step * math.sin(heading), px + step * math.cos(heading)
            pad = width + 2
            y0, y1 = max(int(min(py, qy) - pad), 0), min(int(max(py, qy) + pad) + 1, size)
            x0, x1 = max(int(min(px, qx) - pad), 0), min(int(max(px, qx) + pad) + 1, size)
            if y0 < y1 and x0 < x1:
                yy, xx = torch.meshgrid(torch.arange(y0, y1) + 0.5, torch.arange(x0, x1) + 0.5, indexing="ij")
                dy, dx = qy - py, qx - px
                t = (((yy - py) * dy + (xx - px) * dx) / max(dy * dy + dx * dx, 1e-9)).clamp(0, 1)
                dist = torch.hypot(yy - (py + t * dy), xx - (px + t * dx))  # [h, w]
                piece = (width / 2 + 0.5 - dist).clamp(0, 1)  # [h, w] coverage of a width-px line
                alpha[y0:y1, x0:x1] = torch.maximum(alpha[y0:y1, x0:x1], piece)
            py, px = qy, qx
    return alpha


def _subject_alpha(kind: str, size: int, gen: torch.Generator) -> torch.Tensor:
    """Alpha [H, W] of one subject, roughly centred."""
    y, x = _grid(size)
    centre = size / 2 + size * 0.05 * (torch.rand(2, generator=gen) * 2 - 1)  # [2]
    cy, cx = float(centre[0]), float(centre[1])
    softness = float(_uniform(gen, 1.0, 3.0))
    if kind == "blob":
        return _coverage(_wavy_disc(y, x, cy, cx, size * float(_uniform(gen, 0.22, 0.3)), gen), softness)
    if kind == "hair":
        radius = size * float(_uniform(gen, 0.15, 0.19))
        head = _coverage(_wavy_disc(y, x, cy, cx, radius, gen, amount=0.06), 1.0)
        strands = _strand_alpha(size, (cy, cx, radius), gen, count=60)
        return torch.maximum(head, strands)
    if kind == "ring":
        outer = size * float(_uniform(gen, 0.2, 0.24))
        ring_y, ring_x = cy - size * 0.12, cx - size * 0.1
        dist = torch.hypot(y - ring_y, x - ring_x)  # [H, W]
        ring = torch.minimum(outer - dist, dist - outer * float(_uniform(gen, 0.45, 0.6)))
        alpha = _coverage(ring, softness)
        disc_y, disc_x, disc_r = cy + size * 0.15, cx + size * 0.13, size * 0.16
        disc = disc_r - torch.hypot(y - disc_y, x - disc_x)  # [H, W]
        for _ in range(3):
            ang, rad = float(_uniform(gen, 0, 2 * math.pi)), disc_r * float(_uniform(gen, 0.2, 0.55))
            hole_r = disc_r * float(_uniform(gen, 0.14, 0.24))
            hole = torch.hypot(y - disc_y - rad * math.sin(ang), x - disc_x - rad * math.cos(ang)) - hole_r
            disc = torch.minimum(disc, hole)
        return torch.maximum(alpha, _coverage(disc, softness))
    if kind == "glass":
        radius = size * float(_uniform(gen, 0.22, 0.28))
        dist = _wavy_disc(y, x, cy, cx, radius, gen, amount=0.08)  # [H, W]
        body = float(_uniform(gen, 0.35, 0.6)) + 0.1 * (x - cx) / radius  # [H, W] gentle gradient
        rim_width = max(2.0, size * 0.012)
        level = torch.where(dist < rim_width, torch.full_like(dist, 0.9), body.clamp(0.3, 0.7))
        return _coverage(dist, softness) * level
    raise ValueError(f"subject: unknown kind {kind!r}; use one of {SUBJECTS}")


def _random_colour(gen: torch.Generator) -> torch.Tensor:
    return torch.rand(3, generator=gen)  # [3]


def _colour_away_from(gen: torch.Generator, avoid: list[torch.Tensor]) -> torch.Tensor:
    """A random colour at least MIN_COLOUR_DISTANCE from every colour in `avoid` (resampled until so)."""
    for _ in range(200):
        colour = _random_colour(gen)  # [3]
        if all(float((colour - other).norm()) >= MIN_COLOUR_DISTANCE for other in avoid):
            return colour
    return 1 - avoid[0]


def _background(kind: str, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Background [3, H, W] and its flat colour [3] (None for gradient and noisy)."""
    if kind == "white":
        colour = torch.ones(3)
        return colour.view(3, 1, 1).expand(3, size, size).clone(), colour
    if kind == "plain":
        colour = _random_colour(gen)
        return colour.view(3, 1, 1).expand(3, size, size).clone(), colour
    if kind == "gradient":
        start, end = _random_colour(gen), _random_colour(gen)
        angle = float(_uniform(gen, 0, 2 * math.pi))
        y, x = _grid(size)
        ramp = ((x - size / 2) * math.cos(angle) + (y - size / 2) * math.sin(angle)) / size + 0.5  # [H, W]
        ramp = ramp.clamp(0, 1)
        return start.view(3, 1, 1) * (1 - ramp) + end.view(3, 1, 1) * ramp, None
    if kind == "noisy":
        colour = 0.15 + 0.7 * _random_colour(gen)
        grain = torch.randn(3, size, size, generator=gen) * NOISY_BACKGROUND_SIGMA  # [3, H, W]
        return (colour.view(3, 1, 1) + grain).clamp(0, 1), None
    raise ValueError(f"background: unknown kind {kind!r}; use one of {BACKGROUNDS}")


def make_hint(alpha: torch.Tensor, gen: torch.Generator, factor: int = HINT_FACTOR) -> torch.Tensor:
    """Coarse subject likelihood [1, H/f, W/f] from a true alpha [1, H, W]: area-downsample, blur, add noise."""
    coarse = F.avg_pool2d(alpha[None], factor)  # [1, 1, h, w]
    radius = 2
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / HINT_BLUR_SIGMA) ** 2)
    kernel = kernel / kernel.sum()  # [5]
    coarse = F.pad(coarse, (radius,) * 4, mode="replicate")
    coarse = F.conv2d(coarse, kernel.view(1, 1, 1, -1))
    coarse = F.conv2d(coarse, kernel.view(1, 1, -1, 1))  # [1, 1, h, w]
    noise = torch.randn(coarse.shape, generator=gen) * HINT_NOISE
    return (coarse + noise).clamp(0, 1)[0]  # [1, h, w]


def make_scene(subject: str, background: str, size: int = 256, seed: int = 0) -> RGBAScene:
    """One seeded scene; `size` must be a multiple of 16 (the hint factor)."""
    if size % HINT_FACTOR or size < 4 * HINT_FACTOR:
        raise ValueError(f"size: {size} must be a multiple of {HINT_FACTOR} and at least {4 * HINT_FACTOR}")
    gen = torch.Generator().manual_seed(
        seed * 1000 + SUBJECTS.index(subject) * 10 + BACKGROUNDS.index(background)
    )
    back, flat = _background(background, size, gen)  # [3, H, W]
    alpha = _subject_alpha(subject, size, gen)[None]  # [1, H, W]
    avoid = [flat] if flat is not None else [back[:, 0, 0], back[:, -1, -1], back.mean(dim=(1, 2))]
    base = _colour_away_from(gen, avoid)  # [3]
    y, x = _grid(size)
    shade = 0.9 + 0.2 * ((x + y) / (2 * size))  # [H, W] soft shading across the subject
    fore = (base.view(3, 1, 1) * shade).clamp(0, 1)  # [3, H, W]
    image = alpha * fore + (1 - alpha) * back  # [3, H, W]
    colour = tuple(float(c) for c in flat) if flat is not None else None
    return RGBAScene(subject, background, image, alpha, fore, back, make_hint(alpha, gen), colour)


def scene_set(size: int = 256, seed: int = 0, subjects=SUBJECTS, backgrounds=BACKGROUNDS) -> list[RGBAScene]:
    """Every subject over every background, seeded."""
    return [make_scene(s, b, size, seed) for s in subjects for b in backgrounds]
