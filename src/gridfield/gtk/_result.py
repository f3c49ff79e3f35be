"""The result of every GTK computation (:func:`gridfield.gtk.gtk`, :func:`gridfield.gtk.gtk_fn`)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from gridfield.errors import InputError
from gridfield.gtk._checks import check_budget


@dataclass
class GTK:
    """A computed GTK ``[n1, n2]`` and how it was computed.

    matrix: ``np.ndarray`` (reference, or structured with ``wrt="all"``), ``scipy.sparse.csr_matrix``
    (structured, ``wrt="grid"``) or :class:`~gridfield.gtk.operator.GTKOperator` (operator). From
    :func:`~gridfield.gtk.gtk_fn` with ``channels="diagonal"`` / ``"full"``: a dense ``[n1, n2, m]`` /
    ``[n1, n2, m, m]`` array (one kernel per output channel / pair of channels).
    """

    matrix: np.ndarray | sp.csr_matrix | LinearOperator
    implementation: str
    wrt: str
    out_dim: int
    n_params: int
    seconds: float
    info: dict = dc_field(default_factory=dict)
    preconditioner: LinearOperator | None = None  # M^-1 for CG (operator GTK of a 2D lattice), see gtk.precond

    @property
    def shape(self) -> tuple[int, ...]:
        return self.matrix.shape

    def dense(self, max_bytes: int | None = None) -> np.ndarray:
        """``G`` as a dense ``[n1, n2]`` array (memory checked first; the operator applies ``G`` to ``I``)."""
        check_budget(f"a dense {' x '.join(map(str, self.shape))} GTK", 8.0 * float(np.prod(self.shape)),
                     max_bytes, "use the operator (G.linear_operator()) with eigenspectrum/bound instead")
        if isinstance(self.matrix, np.ndarray):
            return self.matrix
        if sp.issparse(self.matrix):
            return self.matrix.toarray()
        return self.matrix @ np.eye(self.shape[1])

    def linear_operator(self) -> LinearOperator:
        """``G`` as a SciPy ``LinearOperator`` (the operator itself, or a wrapper)."""
        return self.matrix if isinstance(self.matrix, LinearOperator) else aslinearoperator(self.matrix)

    def diagonal(self) -> np.ndarray:
        """``G_ii`` for square kernels: ``[n]``."""
        if self.shape[0] != self.shape[1]:
            raise InputError(f"the diagonal needs a square GTK, this one is {self.shape}")
        m = self.matrix
        return m.diagonal() if not isinstance(m, np.ndarray) else np.diag(m).copy()

    def __repr__(self) -> str:
        return (f"GTK(shape={self.shape}, implementation={self.implementation!r}, wrt={self.wrt!r}, "
                f"out_dim={self.out_dim}, n_params={self.n_params}, seconds={self.seconds:.3g})")
