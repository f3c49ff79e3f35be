"""Image-quality metrics: MSE, PSNR and SSIM (Wang et al. 2004), in PyTorch and differentiable.

SDF metrics (IoU, Chamfer, F-score) live in ``metrics_sdf.py``; radiance-field metrics reuse these.

Example::

    psnr(pred, target)              # dB, data range 1
    ssim(pred_hwc, target_hwc)      # mean SSIM over pixels and channels
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(pred: Tensor, target: Tensor, who: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{who}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.numel() == 0:
        raise ValueError(f"{who}: empty input")


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements (any equal shapes); scalar, differentiable."""
    _check_pair(pred, target, "mse")
    return (pred - target).pow(2).mean()


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB over all elements.

    Any equal shapes. Returns a Python float (``inf`` for identical inputs); not differentiable,
    use :func:`psnr_from_mse` on a tensor loss for a differentiable variant.
    """
    return float(psnr_from_mse(mse(pred.detach().double(), target.detach().double()), data_range))


def psnr_from_mse(m: Tensor | float, data_range: float = 1.0) -> Tensor | float:
    """``10 log10(data_range^2 / m)``; a tensor in gives a (differentiable) tensor out."""
    if isinstance(m, Tensor):
        return 10.0 * torch.log10(data_range**2 / m)
    return math.inf if m == 0 else 10.0 * math.log10(data_range**2 / m)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float64) -> Tensor:
    """Normalised 1D Gaussian ``[size]`` (taps ``exp(-k^2 / 2 sigma^2)``, ``k`` centred)."""
    k = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(k**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Local SSIM ``[C, H - 10, W - 10]`` of ``[H, W, C]`` images (valid region of an 11x11 window).

    Gaussian window (sigma 1.5), population statistics, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``
    (Wang et al. 2004). Computed in the input dtype; differentiable in both inputs.
    """
    _check_pair(pred, target, "ssim")
    if pred.ndim != 3:
        raise ValueError(f"ssim expects [H, W, C] images, got shape {tuple(pred.shape)}")
    h, w, c = pred.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}")
    g = gaussian_window(dtype=pred.dtype).to(pred.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(z: Tensor) -> Tensor:  # [C, H, W] -> [C, H-10, W-10], per-channel valid filtering
        return F.conv2d(z.unsqueeze(0), kernel, groups=c).squeeze(0)

    x, y = pred.permute(2, 0, 1), target.permute(2, 0, 1)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM of ``[H, W, C]`` images over the valid pixels and the channels (float64).

    Matches ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``. Returns a Python float; use
    :func:`ssim_map` for a differentiable tensor.
    """
    return float(ssim_map(pred.detach().double(), target.detach().double(), data_range).mean())
