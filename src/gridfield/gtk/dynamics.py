"""Theorem 1: training dynamics predicted from the GTK, in output space and per frequency.

For ``L = loss_scale * 1/2 ||O - Y||^2`` (``loss_scale = 1``: the paper's sum of squares; a mean
squared error over ``n`` points and ``c`` channels, ``F.mse_loss``, is ``loss_scale = 2 / (n c)``):

* gradient flow: ``O(t) = Y + exp(-s G t) (O(0) - Y)``;
* gradient descent with step ``eta``: ``O_t = Y + (I - eta s G)^t (O_0 - Y)``, exact when the model
  is linear in ``w`` with a fixed kernel (and the channels decouple with the same kernel: with one
  output channel always; an identity decoder on a one-level grid; not on several levels, where each
  level's channels have their own kernel: then pass the ``[n c, n c]`` kernel over points and channels,
  ``gtk_fn(..., channels="full")`` reshaped, with ``y`` and ``o0`` as ``[n c, 1]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridfield.errors import InputError
from gridfield.gtk._matrix import to_dense, unwrap


@dataclass
class Dynamics:
    """Predicted trajectory: ``times [T]`` (steps for GD), ``outputs [T, n, c]``, ``loss [T]``
    (``1/2 ||O - Y||^2``, unscaled), ``mse [T]`` (mean over points and channels)."""

    times: np.ndarray
    outputs: np.ndarray
    loss: np.ndarray
    mse: np.ndarray
    targets: np.ndarray

    def per_frequency(self, shape: int | tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Residual energy per frequency on a lattice: ``(radius [R], energy [T, R])``, see
        :func:`frequency_energy`."""
        return frequency_energy(self.outputs - self.targets[None], shape)


def _arr(a, name: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu().double().numpy() if hasattr(a, "detach") else a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return a[:, None] if a.ndim == 1 else a


def predict_dynamics(g, y, o0, eta: float | None = None, steps: int = 100, times=None,
                     loss_scale: float = 1.0, max_bytes: int | None = None) -> Dynamics:
    """Outputs and loss predicted by Theorem 1 from a GTK ``g`` ``[n, n]``.

    y, o0: targets and initial outputs, ``[n]`` or ``[n, c]``. eta: GD step (``None``: gradient flow
    at ``times``, default ``linspace(0, 10 / lambda_max)``). steps: GD steps (``T = steps + 1`` states).
    Uses one eigendecomposition of ``G`` (dense: ``n`` up to a few thousand).
    """
    gd = to_dense(unwrap(g), max_bytes)
    y, o0 = _arr(y, "y"), _arr(o0, "o0")
    if y.shape != o0.shape or y.shape[0] != gd.shape[0]:
        raise InputError(f"y {y.shape} and o0 {o0.shape} must both be [n, c] with n = {gd.shape[0]}")
    lam, vec = np.linalg.eigh(gd * loss_scale)
    lam = np.clip(lam, 0, None)
    r0 = vec.T @ (o0 - y)  # [n, c] in the eigenbasis
    if eta is not None:
        if eta <= 0:
            raise InputError(f"eta must be positive, got {eta}")
        t = np.arange(steps + 1, dtype=np.float64)
        decay = (1 - eta * lam)[None, :] ** t[:, None]  # [T, n]
    else:
        t = np.linspace(0, 10 / max(lam.max(), 1e-300), steps + 1) if times is None else np.asarray(times, float)
        decay = np.exp(-lam[None, :] * t[:, None])
    res = np.einsum("ij,tj,jc->tic", vec, decay, r0)  # [T, n, c]
    loss = 0.5 * (res**2).sum((1, 2))
    return Dynamics(t, y[None] + res, loss, (res**2).mean((1, 2)), y)


def frequency_energy(residuals: np.ndarray, shape: int | tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``|DFT(residual)|^2 / n`` summed over channels, per frequency: ``[T, n, c]`` -> ``(radius, [T, R])``.

    1D: non-negative frequencies (cycles across the lattice, the two signs summed, so the total
    equals ``||r||^2``); 2D: summed over rings of integer ``round(|omega|)``.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    r = np.asarray(residuals)
    t, n = r.shape[0], r.shape[1]
    if int(np.prod(shape)) != n:
        raise InputError(f"lattice shape {shape} does not hold n = {n} points")
    spec = np.abs(np.fft.fftn(r.reshape(t, *shape, -1), axes=tuple(range(1, len(shape) + 1)))) ** 2
    spec = spec.sum(-1).reshape(t, -1) / n
    freqs = [np.fft.fftfreq(s) * s for s in shape]
    rad = np.rint(np.sqrt(sum(f**2 for f in np.meshgrid(*freqs, indexing="ij")))).astype(int).ravel()
    energy = np.stack([np.bincount(rad, weights=row) for row in spec])
    ok = np.bincount(rad) > 0
    return np.arange(len(ok))[ok], energy[:, ok]
