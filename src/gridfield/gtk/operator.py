"""Matrix-free GTK: ``G v = (J (J^T v) + D (D^T v)) / m`` as a SciPy ``LinearOperator``.

``J^T v`` is one scatter of ``v`` into the grid tables (``J^T`` is a CSC view of the CSR Jacobian:
no copy) and ``J u`` one gather, the cost of a training step; ``D`` is the optional small dense
Jacobian of the decoder/kernel parameters (``wrt="all"``). Memory: ``O(nnz(J))``, never ``O(n^2)``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator


class GTKOperator(LinearOperator):
    """The channel-averaged GTK ``[n, n]`` applied matrix-free (symmetric positive semi-definite).

    jac:   ``[n, m * P]`` sparse grid Jacobian (outputs stacked, see :mod:`gridfield.gtk.jacobian`).
    dense: ``[n, m * Q]`` dense Jacobian of the other parameters, or ``None``.
    out_dim: ``m``, the number of output channels averaged over.
    """

    def __init__(self, jac: sp.csr_matrix, out_dim: int, dense: np.ndarray | None = None) -> None:
        n = jac.shape[0]
        super().__init__(dtype=jac.dtype, shape=(n, n))
        self.jac, self.jac_t, self.dense, self.out_dim = jac, jac.T, dense, out_dim
        self.n_matvec = 0

    def _matvec(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=self.dtype).reshape(-1)
        self.n_matvec += 1
        out = self.jac @ (self.jac_t @ v)  # scatter, then gather
        if self.dense is not None:
            out = out + self.dense @ (self.dense.T @ v)
        return out / self.out_dim

    def _matmat(self, v: np.ndarray) -> np.ndarray:
        if v.shape[1] <= 8:  # SciPy's single-vector kernels are faster than its multi-vector ones
            return np.stack([self._matvec(c) for c in np.asarray(v).T], 1)
        self.n_matvec += v.shape[1]
        out = self.jac @ (self.jac_t @ v)
        if self.dense is not None:
            out = out + self.dense @ (self.dense.T @ v)
        return np.asarray(out) / self.out_dim

    def _adjoint(self) -> GTKOperator:
        return self

    def diagonal(self) -> np.ndarray:
        """``G_ii`` (squared row norms of the Jacobians over ``m``): ``[n]``, without forming ``G``."""
        j = self.jac  # canonical CSR (no duplicates): row sums of squared values
        d = np.bincount(np.repeat(np.arange(j.shape[0]), np.diff(j.indptr)), weights=j.data**2,
                        minlength=j.shape[0])
        if self.dense is not None:
            d = d + np.einsum("ij,ij->i", self.dense, self.dense)
        return d / self.out_dim
