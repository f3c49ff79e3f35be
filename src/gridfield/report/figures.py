"""Figures and image files for the tasks (matplotlib's object API: no pyplot state, no display).

One colour per model, kept the same across every figure (:data:`MODEL_COLORS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

MODEL_COLORS = {
    "dense": "#1f77b4", "hash": "#d62728", "planes": "#2ca02c", "mulfagrid": "#9467bd",
    "rbf": "#8c564b", "ffmlp": "#ff7f0e", "mfn": "#17becf",
}


def model_color(name: str) -> str:
    """The fixed colour of model ``name`` (grey for unknown names)."""
    return MODEL_COLORS.get(name, "#7f7f7f")


def _figure(width: float = 5.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def to_uint8(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[H, W, C]`` float in [0, 1] (clipped) -> uint8 ``[H, W]`` (gray) or ``[H, W, C]``."""
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a


def save_image(path: str | Path, img: torch.Tensor | np.ndarray) -> None:
    """Write a ``[H, W, C]`` image in [0, 1] as 8-bit PNG (C = 1, 3 or 4)."""
    import imageio.v3 as iio

    iio.imwrite(path, to_uint8(img))


def save_error_map(path: str | Path, pred: torch.Tensor, target: torch.Tensor, title: str = "",
                   vmax: float | None = None) -> None:
    """Absolute error ``|pred - target|`` averaged over channels, with a colour bar.

    ``vmax`` fixes the colour scale (use the same value across models); default: the 99th
    percentile of this map.
    """
    err = (pred.detach().cpu().clamp(0, 1) - target.detach().cpu()).abs().mean(-1).numpy()
    if vmax is None:
        vmax = max(float(np.percentile(err, 99)), 1e-3)
    h, w = err.shape
    fig = _figure(5.0 * min(2.0, max(0.6, w / h)) + 1.0, 5.0)
    ax = fig.add_subplot()
    im = ax.imshow(err, cmap="inferno", vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title or "absolute error")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="|prediction - target| (mean over channels)")
    fig.savefig(path, bbox_inches="tight")


def save_psnr_curve(path: str | Path, history: Sequence[dict], label: str = "",
                    color: str | None = None) -> None:
    """PSNR (dB) against training step: full-image train PSNR, and held-out PSNR when present."""
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot()
    evals = [h for h in history if "psnr" in h]
    c = color or model_color(label)
    if evals:
        ax.plot([h["step"] for h in evals], [h["psnr"] for h in evals], "-o", ms=3, color=c,
                label=f"{label} train".strip())
    test = [h for h in evals if "test_psnr" in h]
    if test:
        ax.plot([h["step"] for h in test], [h["test_psnr"] for h in test], "--s", ms=3, color=c,
                alpha=0.7, label=f"{label} held-out".strip())
    ax.set_xlabel("training step")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, alpha=0.3)
    if evals:
        ax.legend(loc="lower right")
    fig.savefig(path, bbox_inches="tight")
