"""A separable preconditioner for the GTK of a full 2D point lattice (pixels), for grids whose levels are
tensor products (``Grid.separable_levels()``: dense and hash grids).

On a lattice of points ``(xs[j], ys[i])`` in row-major order (as :func:`gridfield.data.images.pixel_coords`)
a tensor-product level ``l`` interpolates with 1D hat weights along each axis, so its Jacobian factors as
``J_l = c_l (A_l^y kron A_l^x)`` (``A`` ``[points along the axis, vertices]``) and

    ``G ~= sum_l alpha_l (K_l^y kron K_l^x)``,  ``K_l = A_l A_l^T``,

exactly for dense levels (up to the hash grid's tcnn border aliasing, ~1% of ``G``), approximately for
hashed levels (collisions ignored). The 1D kernels of all levels nearly commute, so in the separable
eigenbasis ``Q_y kron Q_x`` of ``K^y = sum_l alpha_l K_l^y`` (and likewise ``x``) the approximation is
close to diagonal. The preconditioner is the exact diagonal there (Jacobi in that basis):

    ``M = (Q_y kron Q_x) diag(D) (Q_y kron Q_x)^T`` with
    ``D[i, j] = sum_l alpha_l (Q_y^T K_l^y Q_y)_ii (Q_x^T K_l^x Q_x)_jj``.

``M^-1 r`` costs four small dense matmuls (``[H, H]`` and ``[W, W]``); building ``M`` costs two ``eigh`` of
``H x H`` and ``W x W``. The eigenvalues of ``M`` are the entries of ``D`` (used for a lower estimate of
``lambda_min(G)``, see :mod:`gridfield.gtk.bound`).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor


def lattice_axes(x: Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """``(xs [W], ys [H])`` when ``x`` ``[H * W, 2]`` is a full row-major lattice (row ``i * W + j`` is
    ``(xs[j], ys[i])``), else ``None``."""
    if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] < 4:
        return None
    p = x.detach().cpu().double().numpy()
    change = np.flatnonzero(p[1:, 1] != p[0, 1])
    w = int(change[0]) + 1 if change.size else p.shape[0]
    if w < 2 or p.shape[0] % w or p.shape[0] // w < 2:
        return None
    g = p.reshape(-1, w, 2)
    if not (np.all(g[:, :, 0] == g[:1, :, 0]) and np.all(g[:, :, 1] == g[:, :1, 1])):
        return None
    return g[0, :, 0].copy(), g[:, 0, 1].copy()


def _axis_kernel(level, t: np.ndarray) -> tuple[np.ndarray, float]:
    """1D kernel ``K = A A^T`` ``[M, M]`` of one :class:`~gridfield.grids.base.SeparableLevel` along one
    axis and ``||A||_F^2``."""
    cols, w, v = level.axis(t)
    a = sp.csr_matrix((w.ravel(), cols.ravel(), np.arange(0, 2 * len(t) + 1, 2)), shape=(len(t), v))
    return (a @ a.T).toarray(), float((w**2).sum())


class SeparablePreconditioner(LinearOperator):
    """``M^-1`` ``[n, n]`` for a lattice GTK (see the module doc); symmetric positive definite.

    eig_min / eig_max: the extreme eigenvalues of ``M`` itself (entries of ``D``, float64).
    apply_dtype: the precision of the four matmuls of ``M^-1 r`` (``torch.float32`` by default: twice as
    fast, and safe for CG, whose residual is updated with the exact float64 ``G``, so a rounded
    preconditioner can only change the iteration count; measured at 512x512: the same 143 iterations,
    the same bound to 10 digits and ``lambda_min`` estimate to 1e-8 as in float64).
    """

    def __init__(self, q_y: np.ndarray, q_x: np.ndarray, d: np.ndarray, apply_dtype=torch.float32) -> None:
        super().__init__(dtype=np.float64, shape=(d.size, d.size))
        self.q_y, self.q_x, self.d, self.apply_dtype = q_y, q_x, d, apply_dtype
        self.eig_min, self.eig_max = float(d.min()), float(d.max())
        # torch's matmul (its own thread pool) was ~3x faster than NumPy's on the busy 2-core machine
        q_y_t = torch.from_numpy(q_y).to(apply_dtype)
        q_x_t = q_y_t if q_x is q_y else torch.from_numpy(q_x).to(apply_dtype)
        self._t = [q_y_t, q_x_t, torch.from_numpy(d).to(apply_dtype)]

    def _matvec(self, r: np.ndarray) -> np.ndarray:
        q_y, q_x, d = self._t
        rt = torch.from_numpy(np.ascontiguousarray(r, dtype=np.float64).reshape(self.d.shape)).to(self.apply_dtype)
        z = q_y.T @ rt @ q_x
        return (q_y @ (z / d) @ q_x.T).reshape(-1).double().numpy()

    def _matmat(self, r: np.ndarray) -> np.ndarray:
        return np.stack([self._matvec(c) for c in np.asarray(r).T], 1)

    def _adjoint(self) -> SeparablePreconditioner:
        return self

    def shifted(self, shift: float) -> SeparablePreconditioner:
        """The preconditioner for ``G + shift I`` (``D + shift``)."""
        return SeparablePreconditioner(self.q_y, self.q_x, self.d + shift, self.apply_dtype)


#: from this many points on, the preconditioner is applied in float32 (below: float64, exact to rounding)
FLOAT32_FROM = 65536


def lattice_preconditioner(field, x: Tensor, jac: sp.csr_matrix, out_dim: int,
                           apply_dtype: torch.dtype | None = None) -> SeparablePreconditioner | None:
    """The separable preconditioner for ``G = jac jac^T / out_dim`` at points ``x``, or ``None`` when it
    does not apply (points not a full 2D lattice, or a grid without ``separable_levels()``).

    ``jac``: the grid Jacobian of :func:`gridfield.gtk.jacobian.grid_jacobian` (row-level or stacked form);
    each level's weight ``alpha_l`` is its share of ``||jac||_F^2``. apply_dtype: precision of ``M^-1 r``
    (``None``: float32 from :data:`FLOAT32_FROM` points on, else float64). Not differentiable.
    """
    grid = field.grid
    axes = lattice_axes(x) if getattr(grid, "in_dim", None) == 2 else None
    levels = grid.separable_levels() if axes is not None else None
    if not levels:
        return None
    rows = [lv.rows for lv in levels]
    xs, ys = axes
    n_rows = rows[-1][1]
    level_of_row = np.repeat(np.arange(len(rows), dtype=np.int32), [b - a for a, b in rows])
    if jac.shape[1] == n_rows:  # row-level factor: column = table row
        level = level_of_row[jac.indices]
    else:  # stacked outputs: column = o * P + row * F + channel
        feat = grid.features_per_level
        level = level_of_row[(jac.indices % (n_rows * feat)) // feat]
    energy = np.bincount(level, weights=jac.data**2, minlength=len(rows)) / out_dim
    ky, kx = np.zeros((len(ys), len(ys))), np.zeros((len(xs), len(xs)))
    parts = []
    for level, e in zip(levels, energy):
        k_y, ny = _axis_kernel(level, ys)
        k_x, nx = _axis_kernel(level, xs)
        alpha = e / (ny * nx)
        ky += alpha * k_y
        kx += alpha * k_x
        parts.append((alpha, k_y, k_x))
    _, q_y = sla.eigh(ky, driver="evr")  # MRRR: robust and fast also when BLAS threads are contended
    q_x = q_y if np.array_equal(xs, ys) else sla.eigh(kx, driver="evr")[1]
    d = sum(a * np.outer(((k_y @ q_y) * q_y).sum(0), ((k_x @ q_x) * q_x).sum(0)) for a, k_y, k_x in parts)
    floor = 1e-12 * float(d.max())
    if apply_dtype is None:
        apply_dtype = torch.float32 if x.shape[0] >= FLOAT32_FROM else torch.float64
    return SeparablePreconditioner(q_y, q_x, np.maximum(d, floor), apply_dtype)

