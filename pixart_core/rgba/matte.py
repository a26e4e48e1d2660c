"""A training-free matte: alpha and straight foreground colour from an image, a coarse subject hint and its
background, for RGBA from a frozen PixArt (the attention-then-matting route of Alfie, arXiv 2408.14826, with its
GrabCut/ViTMatte replaced by a classical matting solver).

Steps, per image:
  1. Background model: the colour the caller gives, or a quadratic fitted to the border (`trimap.py`).
  2. Trimap from the colour distance to that background and from the hint (`trimap.py`).
  3. Alpha by closed-form matting (Levin, Lischinski and Weiss, "A Closed-Form Solution to Natural Image
     Matting", TPAMI 2008): pymatting's matting Laplacian (`cf_laplacian`), the known pixels as hard
     constraints, a weak prior on the unknown ones (so regions no known pixel reaches, e.g. background enclosed by
     strands, do not float), solved by pymatting's preconditioned conjugate gradients on the unknown pixels'
     bounding box only.
  4. Foreground colour by multi-level estimation (Germer et al., arXiv 2006.14970; pymatting's
     `estimate_foreground_ml`): straight colour, bled outwards where alpha is low.
Images larger than `solve_side` are solved at that size and brought back with a fast guided filter (He and Sun,
arXiv 1505.00996): alpha's local linear model in colour is fitted at the solve's size and applied to the full
image, which restores edges the downscale blurred.

pymatting compiles its numba kernels on its first import in an environment (about a minute of CPU) and caches
them next to its sources (numba falls back to a per-user cache folder when those are read-only); later imports
load the cache (about 2 s). It is imported lazily, on the first matte, so that `import pixart_core` stays light.
"""

from __future__ import annotations

import contextlib
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from .trimap import BackgroundModel, Trimap, build_trimap, fit_background, flat_background

LOG = logging.getLogger(__name__)

SOLVE_SIDE = 512  # longest side the solver works at
LAPLACIAN_EPSILON = 1e-6  # closed-form matting's regulariser (pymatting default 1e-7; more tolerates grain)
CG_RTOL = 1e-5
PRIOR_WEIGHT = 1e-2  # pull of the trimap's prior on unknown pixels, against the Laplacian's O(1) entries
CG_MAXITER = 2000
GUIDED_RADIUS = 2  # px at the solve's resolution
GUIDED_EPSILON = 1e-4
SNAP = 0.01  # alphas this close to 0 or 1 become exactly 0 or 1


def _pymatting():
    try:
        import pymatting
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("matte needs pymatting: pip install pymatting (it brings numba and scipy)") from error
    return pymatting


@contextlib.contextmanager
def _one_numba_thread():
    """Run numba's parallel loops on one thread (this thread only). The multi-level foreground solver launches
    many short parallel loops whose barriers cost more than they save on a few busy cores: at 512 px on two
    shared cores, 0.15-0.23 s on one thread against 0.42-0.87 s on two."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _check_inputs(image, hint, background):
    """Validated (image [B, 3, H, W] float32 CPU, hint [B, 1, h, w] float32 CPU, background tuple or None)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image: expected a tensor [B, 3, H, W], got {shape}")
    if image.shape[0] == 0 or min(image.shape[2:]) < 8:
        raise ValueError(f"image: expected a non-empty batch at least 8x8 px, got {tuple(image.shape)}")
    if not isinstance(hint, torch.Tensor) or hint.ndim not in (3, 4) or (hint.ndim == 4 and hint.shape[1] != 1):
        shape = tuple(hint.shape) if isinstance(hint, torch.Tensor) else type(hint).__name__
        raise ValueError(f"hint: expected a tensor [B, 1, h, w] (or a MASK [B, h, w]), got {shape}")
    hint = hint if hint.ndim == 4 else hint[:, None]
    if hint.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"hint: batch {hint.shape[0]} does not match image batch {image.shape[0]} (use 1 or equal)")
    if min(hint.shape[2:]) < 1:
        raise ValueError(f"hint: empty spatial size {tuple(hint.shape)}")
    image, hint = image.detach().float().cpu(), hint.detach().float().cpu()
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image: contains NaN or infinite values")
    if not bool(torch.isfinite(hint).all()):
        raise ValueError("hint: contains NaN or infinite values")
    if background is not None:
        try:
            colour = tuple(float(c) for c in background)
        except (TypeError, ValueError):
            raise ValueError(f"background: expected None or (r, g, b) in 0..1, got {background!r}") from None
        if len(colour) != 3 or not all(math.isfinite(c) and 0.0 <= c <= 1.0 for c in colour):
            raise ValueError(f"background: expected None or (r, g, b) in 0..1, got {background!r}")
        background = colour
    hint = hint.expand(image.shape[0], -1, -1, -1)
    return image.clamp(0, 1), hint.clamp(0, 1), background


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of [C, h, w] to [C, H, W]; area averaging when shrinking."""
    if tuple(x.shape[1:]) == (height, width):
        return x
    mode = "area" if height <= x.shape[1] and width <= x.shape[2] else "bilinear"
    extra = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x[None], size=(height, width), mode=mode, **extra)[0]


def _solve_alpha(image: torch.Tensor, trimap: Trimap) -> torch.Tensor:
    """Alpha [H, W]: closed-form matting on the bounding box of the unknown pixels (plus the Laplacian's
    reach), with the known pixels as hard constraints and the trimap's prior (the unmixing floor; in translucent
    parts the hint's opacity when larger) as a weak pull on the unknown ones: minimise
    a^T L a + PRIOR_WEIGHT |a_U - prior_U|^2 (Levin et al., section 3, with a soft data term)."""
    import scipy.sparse  # installed with pymatting

    pymatting = _pymatting()
    alpha = trimap.known_alpha.double()  # [H, W]
    rows, cols = torch.nonzero(trimap.unknown.any(dim=1)), torch.nonzero(trimap.unknown.any(dim=0))
    if len(rows) == 0:
        return alpha.float()
    pad = 2
    y0, y1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, image.shape[1])
    x0, x1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, image.shape[2])
    crop = image[:, y0:y1, x0:x1].permute(1, 2, 0).double().contiguous().numpy()  # [h, w, 3]
    unknown = trimap.unknown[y0:y1, x0:x1].numpy().ravel()  # [h*w]
    known = ~unknown
    laplacian = pymatting.cf_laplacian(crop, epsilon=LAPLACIAN_EPSILON, is_known=known.reshape(crop.shape[:2]))
    laplacian_unknown = laplacian[unknown][:, unknown]
    coupling = laplacian[unknown][:, known]
    known_values = alpha[y0:y1, x0:x1].numpy().ravel()[known]  # [K]
    prior = trimap.prior[y0:y1, x0:x1].double().numpy().ravel()[unknown]  # [U]
    system = (laplacian_unknown + PRIOR_WEIGHT * scipy.sparse.identity(len(prior), format="csr")).tocsr()
    rhs = PRIOR_WEIGHT * prior - coupling @ known_values  # [U]
    LOG.debug("matte: solving %d unknown pixels in a %dx%d box", len(prior), y1 - y0, x1 - x0)
    solved = pymatting.cg(system, rhs, x0=prior, rtol=CG_RTOL, maxiter=CG_MAXITER, M=pymatting.ichol(system))
    crop_alpha = alpha[y0:y1, x0:x1].numpy().ravel().copy()
    crop_alpha[unknown] = np.clip(solved, 0, 1)
    alpha[y0:y1, x0:x1] = torch.from_numpy(crop_alpha.reshape(y1 - y0, x1 - x0))
    return alpha.float()


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window with edge replication, [C, H, W] -> [C, H, W]."""
    size = 2 * radius + 1
    return F.avg_pool2d(F.pad(x[None], (radius,) * 4, mode="replicate"), size, stride=1)[0]


def guided_coefficients(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Colour guided filter coefficients (He, Sun and Tang, TPAMI 2013): per pixel, `source` [H, W] is
    fitted as a.guide + b over a window; returns the window-averaged [a_r, a_g, a_b, b] as [4, H, W]."""
    mean_i = _box(guide, radius)  # [3, H, W]
    mean_p = _box(source[None], radius)[0]  # [H, W]
    cov_ip = _box(guide * source[None], radius) - mean_i * mean_p  # [3, H, W]
    products = torch.stack([guide[i] * guide[j] for i in range(3) for j in range(3)])  # [9, H, W]
    outer = torch.stack([mean_i[i] * mean_i[j] for i in range(3) for j in range(3)])  # [9, H, W]
    sigma = (_box(products, radius) - outer).permute(1, 2, 0).reshape(*source.shape, 3, 3)  # [H, W, 3, 3]
    sigma = sigma + eps * torch.eye(3)
    a = torch.linalg.solve(sigma, cov_ip.permute(1, 2, 0)[..., None])[..., 0].permute(2, 0, 1)  # [3, H, W]
    b = mean_p - (a * mean_i).sum(dim=0)  # [H, W]
    return _box(torch.cat([a, b[None]]), radius)  # [4, H, W]


def _upsample_alpha(image: torch.Tensor, small_image: torch.Tensor, small_alpha: torch.Tensor,
                    small_trimap: Trimap) -> torch.Tensor:
    """Alpha [H, W] at the size of `image` [3, H, W] from a solve at a smaller size (fast guided filter)."""
    _, height, width = image.shape
    coefficients = guided_coefficients(small_image, small_alpha, GUIDED_RADIUS, GUIDED_EPSILON)  # [4, h, w]
    coefficients = _resize(coefficients, height, width)  # [4, H, W]
    alpha = (coefficients[:3] * image).sum(dim=0) + coefficients[3]  # [H, W]
    known = torch.stack([small_trimap.foreground, small_trimap.background]).float()  # [2, h, w]
    inside = F.interpolate(known[None], size=(height, width), mode="bilinear", align_corners=False)[0]  # [2, H, W]
    alpha = torch.where(inside[0] > 0.999, torch.ones_like(alpha), alpha)
    return torch.where(inside[1] > 0.999, torch.zeros_like(alpha), alpha)


def _foreground(image: torch.Tensor, alpha: torch.Tensor, small_image: torch.Tensor,
                small_alpha: torch.Tensor) -> torch.Tensor:
    """Straight colour [3, H, W]: multi-level estimation at the solve's size, resized; the image itself where
    alpha is 1."""
    _, height, width = image.shape
    with _one_numba_thread():
        estimate = _pymatting().estimate_foreground_ml(
            small_image.permute(1, 2, 0).double().numpy(), small_alpha.double().numpy()
        )  # [h, w, 3]
    colour = _resize(torch.from_numpy(np.ascontiguousarray(estimate)).float().permute(2, 0, 1), height, width)
    return torch.where(alpha[None] >= 1.0 - SNAP, image, colour).clamp(0, 1)  # [3, H, W]


def _matte_one(image: torch.Tensor, hint: torch.Tensor, background, solve_side: int):
    """alpha [1, H, W] and foreground [3, H, W] for one image [3, H, W] and hint [1, h, w]."""
    _, height, width = image.shape
    scale = min(1.0, solve_side / max(height, width))
    small_h, small_w = max(8, round(height * scale)), max(8, round(width * scale))
    small_image = _resize(image, small_h, small_w)  # [3, h, w]
    model: BackgroundModel = (
        fit_background(small_image) if background is None else flat_background(background, small_image)
    )
    small_hint = _resize(hint, small_h, small_w)[0]  # [h, w]
    trimap = build_trimap(small_image, small_hint, hint[0], model)
    small_alpha = _solve_alpha(small_image, trimap)  # [h, w]
    if (small_h, small_w) == (height, width):
        alpha = small_alpha
    else:
        alpha = _upsample_alpha(image, small_image, small_alpha, trimap)  # [H, W]
    alpha = alpha.clamp(0, 1)
    alpha = torch.where(alpha < SNAP, torch.zeros_like(alpha), alpha)
    alpha = torch.where(alpha > 1 - SNAP, torch.ones_like(alpha), alpha)
    foreground = _foreground(image, alpha, small_image, small_alpha.clamp(0, 1))  # [3, H, W]
    return alpha[None], foreground


def matte(image: torch.Tensor, hint: torch.Tensor, background=None, solve_side: int = SOLVE_SIDE):
    """Alpha [B, 1, H, W] and straight foreground colour [B, 3, H, W] (float32, 0..1, on the image's device).

    image       [B, 3, H, W] in 0..1.
    hint        [B, 1, h, w] (or a MASK [B, h, w]) in 0..1 at any resolution: the subject's likelihood, e.g.
                the upsampled cross-attention of its tokens, or a mask from a background-removal node; batch 1
                is shared by every image. It is read as coverage: where it holds about as much mass as the
                subject's footprint the subject is opaque, where it stays near 0.5 the subject is taken as half
                transparent, so scale attention maps until the subject's core reaches about 1.
    background  None (estimated from the image border, flat or gradient) or its (r, g, b) in 0..1.
    solve_side  the longest side the matting solver works at; larger images are upsampled with guidance.
    """
    device = image.device if isinstance(image, torch.Tensor) else torch.device("cpu")
    image, hint, background = _check_inputs(image, hint, background)
    if solve_side < 64:
        raise ValueError(f"solve_side: {solve_side} is too small; use at least 64")
    alphas, foregrounds = [], []
    for index in range(image.shape[0]):
        alpha, foreground = _matte_one(image[index], hint[index], background, solve_side)
        alphas.append(alpha)
        foregrounds.append(foreground)
    return torch.stack(alphas).to(device), torch.stack(foregrounds).to(device)
