"""2D image fitting on the training core: ``g(x, y) -> colour`` on pixel centres, optional hold-out.

:class:`ImageTask` is the task's part of the loop (batch, loss, evaluation); :func:`fit_image` runs it
with :func:`gridfield.training.train`; :func:`render_image` evaluates a field on any ``H x W`` lattice.
Outputs are raw (no sigmoid, so a linear model stays linear for the GTK); they are clamped to ``[0, 1]``
only for metrics and images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gridfield.data.images import pixel_coords
from gridfield.metrics import psnr, psnr_from_mse, ssim
from gridfield.training import TrainConfig, TrainTask, cosine, distributed, train


@dataclass
class FitResult:
    """What :func:`fit_image` returns: the trained field, final metrics, evaluation history."""

    field: nn.Module
    metrics: dict
    history: list[dict] = dc_field(default_factory=list)


def holdout_mask(H: int, W: int, fraction: float, pattern: str = "random",
                 generator: torch.Generator | None = None) -> Tensor:
    """Held-out pixels ``[H * W]`` bool (row-major; True = test), about ``fraction`` of the image.

    ``random``: exactly ``round(fraction * H * W)`` pixels drawn without replacement.
    ``regular``: a sub-lattice with stride ``s`` in both axes (pixels with ``i % s == j % s == 0``):
    for ``fraction >= 0.5`` the lattice is the TRAINING set with ``s = round(1 / sqrt(1 - fraction))``
    (``0.75`` -> train on every other pixel per axis, a 2x super-resolution test); below 0.5 it is
    the TEST set with ``s = round(1 / sqrt(fraction))``. The actual fraction is ``mask.float().mean()``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    n = H * W
    mask = torch.zeros(n, dtype=torch.bool)
    if fraction == 0.0:
        return mask
    if pattern == "random":
        k = min(n - 1, max(1, round(fraction * n)))
        mask[torch.randperm(n, generator=generator)[:k]] = True
        return mask
    if pattern != "regular":
        raise ValueError(f"holdout pattern must be 'random' or 'regular', got {pattern!r}")
    i = torch.arange(H).view(H, 1)
    j = torch.arange(W).view(1, W)
    if fraction >= 0.5:
        s = max(2, round(1 / math.sqrt(1 - fraction)))
        return ~((i % s == 0) & (j % s == 0)).reshape(-1)
    s = max(2, round(1 / math.sqrt(fraction)))
    return ((i % s == 0) & (j % s == 0)).reshape(-1)


def _predict(field: nn.Module, x: Tensor, chunk: int = 1 << 18) -> Tensor:
    with torch.no_grad():
        return torch.cat([field(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)])


@torch.no_grad()
def render_image(field: nn.Module, H: int, W: int, chunk: int = 1 << 18, clamp: bool = True) -> Tensor:
    """Evaluate ``field`` at the pixel centres of an ``H x W`` image: ``[H, W, out_dim]`` (float32).

    Any resolution works (the field is continuous on ``[-1, 1]^2``); ``clamp`` clips to ``[0, 1]``.
    Evaluated in chunks of ``chunk`` pixels, without gradients.
    """
    p0 = next(field.parameters())
    x = pixel_coords(H, W, device=p0.device).to(p0.dtype)
    out = _predict(field, x, chunk).float().reshape(H, W, -1).cpu()
    return out.clamp(0, 1) if clamp else out


class ImageTask(TrainTask):
    """Mean squared error on random pixel batches (with replacement) or on every training pixel.

    ``batch_size`` is per rank (None, or at least the training set: every training pixel, split over
    the ranks). Evaluates PSNR on training and held-out pixels every ``eval_every`` steps.
    """

    schedule = staticmethod(cosine(final=0.01))

    def __init__(self, field: nn.Module, image: Tensor, batch_size: int | None, test: Tensor, eval_every: int):
        H, W, C = image.shape
        p0 = next(field.parameters())
        self.module, self.eval_every = field, eval_every
        self.x = pixel_coords(H, W, device=p0.device).to(p0.dtype)
        self.y = image.reshape(-1, C).to(p0.device, p0.dtype)
        self.test = test.to(p0.device)
        self.train_x, self.train_y = self.x[~self.test], self.y[~self.test]
        full = batch_size is None or batch_size >= self.train_x.shape[0]
        self.batch_size = None if full else batch_size

    def batch_loss(self, step: int, gen: torch.Generator):
        info = distributed.current()
        if self.batch_size is None:
            part = info.shard(self.train_x.shape[0] - self.train_x.shape[0] % info.world)
            bx, by = self.train_x[part], self.train_y[part]
        else:
            n = self.batch_size * info.world
            idx = torch.randint(self.train_x.shape[0], (n,), generator=gen)[info.shard(n)].to(self.x.device)
            bx, by = self.train_x[idx], self.train_y[idx]
        return (self.module(bx) - by).pow(2).mean(), {}

    def evaluate(self, step: int) -> dict[str, Any]:
        pred = _predict(self.module, self.x).clamp(0, 1)
        out = {"psnr": psnr(pred[~self.test], self.y[~self.test])}
        if self.test.any():
            out["test_psnr"] = psnr(pred[self.test], self.y[self.test])
        return out

    def postfix(self, loss: float, logs: dict) -> dict[str, str]:
        return {"psnr": f"{float(psnr_from_mse(loss)):.2f}"}


def fit_image(
    field: nn.Module,
    image: Tensor,  # [H, W, C]
    *,
    steps: int = 2000,
    batch_size: int | None = None,
    lr_grid: float = 1e-2,
    lr_other: float = 1e-3,
    holdout: float = 0.0,
    holdout_pattern: Literal["random", "regular"] = "random",
    seed: int = 0,
    progress: bool = True,
    hooks: Sequence[Any] | None = None,
    eval_every: int = 100,
    train_cfg: TrainConfig | None = None,
    state_path: Path | None = None,
    resume_key: dict | None = None,
) -> FitResult:
    """Fit ``field`` (``[N, 2] -> [N, C]``) to ``image`` ``[H, W, C]`` by Adam on the mean squared error.

    Cosine decay to 1% over the run's progress (:mod:`gridfield.training.schedule`). ``holdout`` > 0
    trains on the other pixels only (see :func:`holdout_mask`, drawn from its own generator seeded
    with ``seed``) and reports ``test_psnr``. ``train_cfg`` (steps, time budget, seed, progress,
    checkpoints, resume) overrides ``steps``/``seed``/``progress``; ``state_path`` and ``resume_key``
    go to :func:`gridfield.training.train`. The field is trained in place, on its own device.

    metrics: ``psnr`` (training pixels), ``test_psnr`` (held-out pixels, hold-out mode only),
    ``full_psnr`` and ``ssim`` (whole image), ``train_seconds`` (the loop without evaluations),
    ``holdout_fraction``, ``steps``.
    """
    if image.ndim != 3 or image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"fit_image expects an [H, W, C] image, got shape {tuple(image.shape)}")
    if steps < 1 or (batch_size is not None and batch_size < 1) or eval_every < 1:
        raise ValueError(f"need steps >= 1, batch_size >= 1 (or None), eval_every >= 1; got "
                         f"{steps}, {batch_size}, {eval_every}")
    if not torch.isfinite(image).all():
        raise ValueError("fit_image: the image contains NaN or infinite values")
    cfg = train_cfg or TrainConfig(steps=steps, seed=seed, progress=progress, checkpoint_every=0)
    H, W, C = image.shape
    test = holdout_mask(H, W, holdout, holdout_pattern, torch.Generator().manual_seed(cfg.seed))
    task = ImageTask(field, image, batch_size, test, eval_every)
    res = train(task, cfg, lr_grid, lr_other, hooks=hooks, state_path=state_path, resume_key=resume_key)
    metrics = {"train_seconds": res.seconds, "steps": res.steps, "holdout_fraction": float(test.float().mean())}
    if distributed.current().is_main:
        ev = task.evaluate(res.steps)
        pred = _predict(field, task.x).clamp(0, 1).reshape(H, W, C).cpu()
        img = image.to(pred.dtype)
        metrics |= {**ev, "full_psnr": psnr(pred, img), "ssim": ssim(pred, img) if min(H, W) >= 11 else None}
    return FitResult(field, metrics, res.history)
