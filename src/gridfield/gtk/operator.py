"""Matrix-free GTK: ``G v = (J (J^T v) + D (D^T v)) / m`` as a SciPy ``LinearOperator``.

``J^T v`` is one scatter of ``v`` into the grid tables and ``J u`` one gather, the cost of a training
step. Both run in one C++ call on the Jacobian in ELL layout (:mod:`gridfield.fast.gram`: threads
scatter into private copies of the table, no atomics), which moves 12 bytes per non-zero and pass;
SciPy's single-threaded CSR products (``J^T`` as a CSC view) are the fallback. ``D`` is the optional
small dense Jacobian of the decoder/kernel parameters (``wrt="all"``). Memory: ``O(nnz(J))``, never
``O(n^2)``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import LinearOperator

from gridfield.fast.gram import GramProduct, ell_from_csr


class GTKOperator(LinearOperator):
    """The channel-averaged GTK ``[n, n]`` applied matrix-free (symmetric positive semi-definite).

    jac:   ``[n, m * P]`` sparse grid Jacobian (outputs stacked, see :mod:`gridfield.gtk.jacobian`).
    dense: ``[n, m * Q]`` dense Jacobian of the other parameters, or ``None``.
    out_dim: ``m``, the number of output channels averaged over.
    backend: ``"auto" | "fast" | "reference"`` for the ELL product (:mod:`gridfield.fast.gram`);
    ``"reference"`` uses SciPy's CSR products.
    """

    def __init__(self, jac: sp.csr_matrix, out_dim: int, dense: np.ndarray | None = None,
                 backend: str = "auto") -> None:
        n = jac.shape[0]
        super().__init__(dtype=jac.dtype, shape=(n, n))
        self.jac, self.jac_t, self.dense, self.out_dim = jac, jac.T, dense, out_dim
        self.n_matvec = 0
        gram = GramProduct(*ell_from_csr(jac), jac.shape[1], backend) if jac.dtype == np.float64 else None
        self.gram = gram if gram is not None and gram.fast else None

    def _product(self, v: np.ndarray) -> np.ndarray:
        """``J (J^T v)`` for ``v`` ``[n, c]``."""
        if v.shape[1] > 8:  # wide blocks (e.g. densifying): SciPy's multi-vector sparse products
            return np.asarray(self.jac @ (self.jac_t @ v))
        if self.gram is not None:
            return self.gram(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))).numpy()
        return np.stack([self.jac @ (self.jac_t @ c) for c in v.T], 1)  # SciPy's single-vector kernels

    def _matvec(self, v: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(v, dtype=self.dtype).reshape(-1, 1))[:, 0]

    def _matmat(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=self.dtype)
        self.n_matvec += v.shape[1]
        out = self._product(v)
        if self.dense is not None:
            out = out + self.dense @ (self.dense.T @ v)
        return out / self.out_dim

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
