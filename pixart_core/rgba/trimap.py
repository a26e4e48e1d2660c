"""Background model and trimap for the matte: which pixels are surely background, surely subject, or unknown.

The background is either a colour the caller knows or a smooth model fitted to the image border (a quadratic
polynomial in x and y per channel, fitted by least squares with outlier rejection so a subject touching the
border does not bend it): plain and linear-gradient backgrounds are then exact. A pixel is background-like when
its colour, as it is or averaged over 3x3 (which tames grain), lies within the border's own noise of the model.

The trimap then combines colour with the hint (a low-resolution subject likelihood, e.g. upsampled attention):
    subject pixels  not background-like, inside the hint's region (the hint, dilated, above a low level), in
                    8-connected groups that reach where the hint is confident, so strands the coarse hint cannot
                    see are kept while stray grain and unrelated objects are not;
    inside          subject pixels a few pixels deep inside the subject (eroded), where the hint is not low:
                    sure foreground (alpha 1) where opaque, else fixed at the translucency prior (below);
    unknown         subject pixels and a thin ring around them, less the inside;
    background      everything else (including holes whose colour is the background's).
Opacity comes from the hint's mass: where the hint holds about as much mass as the subject's footprint the
subject is opaque; where it holds less (a semi-transparent part), alpha is taken as that ratio or the
colour-unmixing floor (the least alpha that explains the colour over the background), whichever is larger.
So the hint is read as coverage: a MASK or an attention map scaled so the subject's core reaches about 1 (as
Alfie's `clip(1.5 * a_hat)` does) gives an opaque subject; a hint that stays near 0.5 over a subject gives a
half-transparent one.
Everything here is torch on the CPU at the solve's resolution; `scipy.ndimage.label` (scipy comes with
pymatting) finds the groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

BORDER_FRACTION = 0.03  # width of the border band the background model is fitted to
MIN_BORDER = 2
BACKGROUND_DISTANCE_FLOOR = 0.035  # colour distance (RGB Euclidean, 0..1) below which a pixel is background-like
NOISE_MARGIN = 1.6  # times the border's 99th-percentile residual
HINT_REGION_LEVEL = 0.12  # dilated hint above this: the subject may be here
HINT_CORE_LEVEL = 0.5  # hint above this: the subject surely overlaps
HINT_FOREGROUND_LEVEL = 0.3  # sure foreground needs at least this much hint, and opacity:
OPAQUE_RATIO = 0.75  # the hint's mass over the subject's footprint at least this ...
OPAQUE_FLOOR = 0.95  # ... or the colour alone needs at least this alpha
OPACITY_WINDOW = 2  # hint cells each side over which mass and footprint are compared
OPACITY_MIN_AREA = 1.0  # footprint (in cells) below which the opacity is not judged
ERODE_FOREGROUND = 3  # px at the solve's resolution between sure foreground and the subject's outline
DILATE_UNKNOWN = 1  # px of unknown ring outside the subject's outline (faint anti-aliasing)


@dataclass
class BackgroundModel:
    """A smooth background: polynomial coefficients [6, 3] in (1, x, y, xy, x^2, y^2) with x, y in 0..1, and
    the border's grain: the 99th percentile of its residual colour distance per pixel and after 3x3 averaging."""

    coefficients: torch.Tensor  # [6, 3]
    noise: float
    noise_smoothed: float

    def render(self, height: int, width: int) -> torch.Tensor:
        """The background image [3, H, W] at any resolution."""
        basis = _basis(height, width)  # [H*W, 6]
        return (basis @ self.coefficients).T.reshape(3, height, width).clamp(0, 1)  # [3, H, W]

    def thresholds(self) -> tuple[float, float]:
        """Colour distances (per pixel, 3x3-averaged) below which a pixel is background-like."""
        return (max(BACKGROUND_DISTANCE_FLOOR, NOISE_MARGIN * self.noise),
                max(BACKGROUND_DISTANCE_FLOOR, NOISE_MARGIN * self.noise_smoothed))


@dataclass
class Trimap:
    """What the solver is told, at its resolution: `unknown` [H, W] pixels to solve; `known_alpha` [H, W] the
    value of every other pixel (1 sure foreground, 0 sure background, the prior inside translucent parts);
    `prior` [H, W] the weak prior for the unknown pixels."""

    unknown: torch.Tensor
    known_alpha: torch.Tensor
    prior: torch.Tensor

    @property
    def foreground(self) -> torch.Tensor:
        return ~self.unknown & (self.known_alpha >= 1)  # [H, W]

    @property
    def background(self) -> torch.Tensor:
        return ~self.unknown & (self.known_alpha <= 0)  # [H, W]


def _basis(height: int, width: int) -> torch.Tensor:
    y = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    x = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    yy, xx = torch.meshgrid(y, x, indexing="ij")  # [H, W]
    terms = [torch.ones_like(xx), xx, yy, xx * yy, xx * xx, yy * yy]
    return torch.stack([t.reshape(-1) for t in terms], dim=1)  # [H*W, 6]


def _box3(image: torch.Tensor) -> torch.Tensor:
    """3x3 mean with edge replication, [C, H, W] -> [C, H, W]."""
    return F.avg_pool2d(F.pad(image[None], (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0]


def colour_distances(image: torch.Tensor, background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean RGB distances [H, W] of `image` [3, H, W] to `background` [3, H, W]: per pixel, and after
    3x3 averaging of both (which tames grain)."""
    difference = image - background  # [3, H, W]
    return difference.norm(dim=0), _box3(difference).norm(dim=0)


def _border_mask(height: int, width: int) -> torch.Tensor:
    band = max(MIN_BORDER, round(BORDER_FRACTION * min(height, width)))
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[:band], mask[-band:], mask[:, :band], mask[:, -band:] = True, True, True, True
    return mask  # [H, W]


def _grain(image: torch.Tensor, background: torch.Tensor, border: torch.Tensor) -> tuple[float, float]:
    """99th percentiles of the two colour distances over the border pixels that fit the background."""
    levels = []
    for distance in colour_distances(image, background):
        values = distance[border]  # [N]
        close = values[values <= max(3.0 * float(values.median()), BACKGROUND_DISTANCE_FLOOR)]
        levels.append(float(torch.quantile(close, 0.99)) if len(close) else 0.0)
    return levels[0], levels[1]


def fit_background(image: torch.Tensor, rounds: int = 3) -> BackgroundModel:
    """Fit a quadratic background to the border of `image` [3, H, W], dropping border pixels far from the fit
    (a subject that touches the border) between rounds."""
    _, height, width = image.shape
    border_2d = _border_mask(height, width)  # [H, W]
    border = border_2d.reshape(-1)  # [H*W]
    basis = _basis(height, width)[border]  # [N, 6]
    colours = _box3(image).reshape(3, -1).T[border]  # [N, 3]
    keep = torch.ones(len(colours), dtype=torch.bool)  # [N]
    for _ in range(rounds):
        solution = torch.linalg.lstsq(basis[keep].double(), colours[keep].double()).solution.float()  # [6, 3]
        residual = (basis @ solution - colours).norm(dim=1)  # [N]
        new_keep = residual <= max(3.0 * float(residual[keep].median()), BACKGROUND_DISTANCE_FLOOR)
        if int(new_keep.sum()) < 6 or torch.equal(new_keep, keep):
            break
        keep = new_keep
    model = BackgroundModel(solution, 0.0, 0.0)
    model.noise, model.noise_smoothed = _grain(image, model.render(height, width), border_2d)
    return model


def flat_background(colour, image: torch.Tensor) -> BackgroundModel:
    """A known flat colour (r, g, b) as a model; the grain is measured on the border of `image` [3, H, W]."""
    coefficients = torch.zeros(6, 3)
    coefficients[0] = torch.tensor([float(c) for c in colour])
    _, height, width = image.shape
    model = BackgroundModel(coefficients, 0.0, 0.0)
    model.noise, model.noise_smoothed = _grain(image, model.render(height, width), _border_mask(height, width))
    return model


def unmixing_floor(image: torch.Tensor, background: torch.Tensor, slack: float) -> torch.Tensor:
    """The least alpha [H, W] that explains `image` [3, H, W] over `background` [3, H, W] with any foreground
    colour in 0..1: per channel (I - B) / (1 - B) when brighter, (B - I) / B when darker, the maximum over
    channels, after `slack` of colour difference is forgiven as grain."""
    difference = image - background  # [3, H, W]
    magnitude = (difference.abs() - slack).clamp(min=0)  # [3, H, W]
    room = torch.where(difference > 0, 1 - background, background).clamp(min=1e-3)  # [3, H, W]
    return (magnitude / room).amax(dim=0).clamp(0, 1)  # [H, W]


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    size = 2 * radius + 1
    return F.max_pool2d(mask[None, None].float(), size, stride=1, padding=radius)[0, 0] > 0.5  # [H, W]


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return ~_dilate(~mask, radius)


def _groups_touching(candidates: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """The 8-connected groups of `candidates` [H, W] that contain at least one `seeds` pixel."""
    from scipy import ndimage  # installed with pymatting

    labels, count = ndimage.label(candidates.numpy(), structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return candidates.clone()
    hit = np.zeros(count + 1, dtype=bool)
    hit[np.unique(labels[seeds.numpy() & (labels > 0)])] = True
    hit[0] = False
    return torch.from_numpy(hit[labels])  # [H, W]


def opacity_from_hint(subject: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """How opaque the subject is, [h, w] at the hint's resolution: the hint's mass over a few cells divided by
    the subject's footprint there (the subject mask area-averaged to the hint's grid). Blur moves mass but keeps
    it, so a thin opaque part scores about 1 however faint its hint, and a half-transparent part about 0.5.
    Where the footprint is too small to judge, 1 (opaque)."""
    cells = hint.shape[-2:]
    footprint = F.adaptive_avg_pool2d(subject[None, None].float(), cells)  # [1, 1, h, w]
    window = 2 * OPACITY_WINDOW + 1

    def total(x: torch.Tensor) -> torch.Tensor:  # sum over the window, zero outside the grid
        return F.avg_pool2d(x, window, stride=1, padding=OPACITY_WINDOW, count_include_pad=True) * window**2

    mass, area = total(hint[None, None].float()), total(footprint)  # [1, 1, h, w] each
    ratio = torch.where(area >= OPACITY_MIN_AREA, mass / area.clamp(min=1e-6), torch.ones_like(area))
    return ratio[0, 0].clamp(0, 1)  # [h, w]


def build_trimap(image: torch.Tensor, hint: torch.Tensor, coarse_hint: torch.Tensor, model: BackgroundModel
                 ) -> Trimap:
    """Trimap at the resolution of `image` [3, H, W]. `hint` [H, W] is the subject likelihood resized to it,
    `coarse_hint` [h, w] the same at its own resolution."""
    _, height, width = image.shape
    hint_cell = height / coarse_hint.shape[0]
    background = model.render(height, width)  # [3, H, W]
    distance, smoothed = colour_distances(image, background)  # [H, W] each
    limit, limit_smoothed = model.thresholds()
    not_background = (distance > limit) & (smoothed > limit_smoothed)  # [H, W]
    floor = unmixing_floor(image, background, slack=limit / 3**0.5)  # [H, W]
    region = _dilate(hint > HINT_REGION_LEVEL, max(1, round(1.5 * hint_cell)))  # [H, W]
    core = hint > HINT_CORE_LEVEL  # [H, W]
    if not bool((core & not_background).any()):  # a weak hint: trust its strongest part
        core = hint >= 0.5 * float(hint.max())
    subject = _groups_touching(not_background & region, core)  # [H, W]
    opacity = opacity_from_hint(subject, coarse_hint)  # [h, w]
    opacity = F.interpolate(opacity[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    opaque = (opacity >= OPAQUE_RATIO) | (floor > OPAQUE_FLOOR)  # [H, W]
    prior = torch.where(opaque, floor, torch.maximum(floor, opacity))  # [H, W]
    inside = _erode(subject, ERODE_FOREGROUND) & (hint > HINT_FOREGROUND_LEVEL)  # [H, W]
    known_alpha = torch.where(inside, torch.where(opaque, torch.ones_like(prior), prior), torch.zeros_like(prior))
    unknown = _dilate(subject, DILATE_UNKNOWN) & ~inside  # [H, W]
    return Trimap(unknown, known_alpha * ~unknown, prior)
