"""Alpha-matte error measures of alphamatting.com (Rhemann et al., "A Perceptually Motivated Online Benchmark
for Image Matting", CVPR 2009), as computed by the evaluation code that later papers share (Xu et al., Deep Image
Matting, arXiv 1703.03872: `compute_sad_loss.m`, `compute_mse_loss.m`, `compute_gradient_loss.m`,
`compute_connectivity_error.m`, with G. Xiong's `gaussgradient.m`).

Alphas are 0..1 arrays [H, W] (torch or numpy; a leading 1 is dropped). `region` is an optional boolean [H, W]
where errors count (the benchmark uses the trimap's unknown band); None counts every pixel. As usually reported:
SAD, Grad and Conn are divided by 1000; MSE is the plain mean over the region. The MATLAB gradient code first
applies `mat2gray`, which is the identity for a matte that spans 0..1; here alphas are taken as they are.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

GRADIENT_SIGMA = 1.4
CONNECTIVITY_STEP = 0.1
CONNECTIVITY_THETA = 0.15


def _as_plane(alpha, name: str) -> np.ndarray:
    """A float64 [H, W] array from a torch tensor or array of shape [H, W] or [1, H, W]."""
    if hasattr(alpha, "detach"):
        alpha = alpha.detach().cpu().double().numpy()
    plane = np.asarray(alpha, dtype=np.float64)
    if plane.ndim == 3 and plane.shape[0] == 1:
        plane = plane[0]
    if plane.ndim != 2:
        raise ValueError(f"{name}: expected an alpha of shape [H, W] or [1, H, W], got {tuple(plane.shape)}")
    return plane


def _inputs(pred, target, region):
    pred, target = _as_plane(pred, "pred"), _as_plane(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred: shape {pred.shape} differs from target's {target.shape}")
    if region is None:
        mask = np.ones(pred.shape, dtype=bool)
    else:
        mask = _as_plane(region, "region") > 0.5
        if mask.shape != pred.shape:
            raise ValueError(f"region: shape {mask.shape} differs from the alphas' {pred.shape}")
    return pred, target, mask


def sad(pred, target, region=None) -> float:
    """Sum of absolute differences over the region, /1000."""
    pred, target, mask = _inputs(pred, target, region)
    return float(np.abs(pred - target)[mask].sum() / 1000)


def mse(pred, target, region=None) -> float:
    """Mean squared difference over the region (0 for an empty region)."""
    pred, target, mask = _inputs(pred, target, region)
    return float(((pred - target) ** 2)[mask].mean()) if mask.any() else 0.0


def gaussian_gradient_kernels(sigma: float = GRADIENT_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """The x and y first-derivative-of-Gaussian kernels of `gaussgradient.m`: half-size
    ceil(sigma * sqrt(-2 log(sqrt(2 pi) sigma 0.01))), entries gauss(row) * dgauss(col), unit L2 norm."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 1e-2)))
    offsets = np.arange(-half, half + 1, dtype=np.float64)  # [K]
    gauss = np.exp(-(offsets**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))  # [K]
    dgauss = -offsets * gauss / sigma**2  # [K]
    kernel_x = gauss[:, None] * dgauss[None, :]  # [K, K] derivative along columns
    kernel_x /= math.sqrt((kernel_x**2).sum())
    return kernel_x, kernel_x.T.copy()


def _gradient_magnitude(alpha: np.ndarray, sigma: float) -> np.ndarray:
    kernel_x, kernel_y = gaussian_gradient_kernels(sigma)
    # imfilter(..., 'replicate', 'conv') is a true convolution with edge replication
    grad_x = ndimage.convolve(alpha, kernel_x, mode="nearest")  # [H, W]
    grad_y = ndimage.convolve(alpha, kernel_y, mode="nearest")  # [H, W]
    return np.hypot(grad_x, grad_y)


def gradient_error(pred, target, region=None, sigma: float = GRADIENT_SIGMA) -> float:
    """Sum over the region of (|grad pred| - |grad target|)^2 with Gaussian-derivative gradients, /1000."""
    pred, target, mask = _inputs(pred, target, region)
    error = (_gradient_magnitude(pred, sigma) - _gradient_magnitude(target, sigma)) ** 2  # [H, W]
    return float(error[mask].sum() / 1000)


def _largest_component(binary: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean image (all False when there is none)."""
    labels, count = ndimage.label(binary)  # default structure: 4-connectivity in 2-D
    if count == 0:
        return np.zeros_like(binary)
    sizes = np.bincount(labels.ravel())[1:]  # [count]
    return labels == (int(np.argmax(sizes)) + 1)


def connectivity_error(
    pred, target, region=None, step: float = CONNECTIVITY_STEP, theta: float = CONNECTIVITY_THETA
) -> float:
    """Connectivity error, /1000: for each threshold t = step, 2 step, ..., 1, pixels outside the largest
    4-connected component of (pred >= t) & (target >= t) get the level l = t - step where they first drop out
    (1 if never); phi = 1 - d * (d >= theta) with d = alpha - l; the error is sum |phi_pred - phi_target|."""
    pred, target, mask = _inputs(pred, target, region)
    levels = [round(i * step, 10) for i in range(int(round(1 / step)) + 1)]
    level_map = np.full(pred.shape, -1.0)  # [H, W]
    for previous, threshold in zip(levels[:-1], levels[1:]):
        omega = _largest_component((pred >= threshold) & (target >= threshold))  # [H, W]
        level_map[(level_map == -1) & ~omega] = previous
    level_map[level_map == -1] = 1.0
    pred_d, target_d = pred - level_map, target - level_map  # [H, W]
    pred_phi = 1 - pred_d * (pred_d >= theta)
    target_phi = 1 - target_d * (target_d >= theta)
    return float(np.abs(pred_phi - target_phi)[mask].sum() / 1000)


def all_errors(pred, target, region=None) -> dict[str, float]:
    """SAD, MSE, Grad and Conn in one dict, in the units above."""
    return {
        "sad": sad(pred, target, region),
        "mse": mse(pred, target, region),
        "grad": gradient_error(pred, target, region),
        "conn": connectivity_error(pred, target, region),
    }
