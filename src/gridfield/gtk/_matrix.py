"""Accept a GTK in any of its forms (``GTK`` result, dense array, sparse matrix, LinearOperator)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from gridfield.errors import InputError
from gridfield.gtk._checks import check_budget


def unwrap(g) -> np.ndarray | sp.spmatrix | LinearOperator:
    """The matrix inside a ``GTK`` result, or ``g`` itself; checks that it is square."""
    m = getattr(g, "matrix", g)
    if isinstance(m, np.ndarray) or sp.issparse(m) or isinstance(m, LinearOperator):
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise InputError(f"expected a square GTK [n, n], got shape {tuple(m.shape)}")
        return m
    if hasattr(m, "detach"):  # a torch tensor
        return unwrap(m.detach().cpu().double().numpy())
    raise InputError(f"expected a GTK, a numpy array, a scipy sparse matrix or a LinearOperator, "
                     f"got {type(m).__name__}")


def is_explicit(m) -> bool:
    """True for a dense or sparse matrix (entries available), False for a LinearOperator."""
    return isinstance(m, np.ndarray) or sp.issparse(m)


def to_dense(m, max_bytes: int | None = None) -> np.ndarray:
    """Dense ``[n, n]`` float64 copy (memory checked first; an operator is applied to the identity)."""
    n = m.shape[0]
    check_budget(f"a dense {n} x {n} GTK", 8.0 * n * n, max_bytes,
                 "use the Lanczos / conjugate-gradient paths (method='cg', fewer eigenvalues)")
    if isinstance(m, np.ndarray):
        return np.asarray(m, dtype=np.float64)
    if sp.issparse(m):
        return m.toarray().astype(np.float64, copy=False)
    return np.asarray(m @ np.eye(n))


def as_operator(m) -> LinearOperator:
    """``m`` as a SciPy ``LinearOperator``."""
    return m if isinstance(m, LinearOperator) else aslinearoperator(m)


def diagonal(m) -> np.ndarray:
    """``G_ii`` ``[n]``; an operator must provide ``diagonal()`` (``GTKOperator`` does)."""
    if isinstance(m, np.ndarray):
        return np.diag(m).astype(np.float64)
    if sp.issparse(m) or hasattr(m, "diagonal"):
        return np.asarray(m.diagonal(), dtype=np.float64)
    raise InputError("this LinearOperator has no diagonal(); pass a GTK from gridfield.gtk.gtk")
