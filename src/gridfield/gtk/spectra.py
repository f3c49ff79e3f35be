"""Spectra of a GTK: eigenvalues (full or Lanczos extremes), condition number, effective rank, and the
exact Fourier spectrum on a 1D/2D lattice via the offset-summed kernel and an FFT."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh, lobpcg

from gridfield.errors import InputError
from gridfield.gtk._matrix import as_operator, is_explicit, to_dense, unwrap


@dataclass
class Spectrum:
    """Eigenvalues (descending) of a GTK and the numbers derived from them.

    complete: all ``n`` eigenvalues (dense ``eigh``) or only Lanczos extremes (``eigsh``).
    lambda_min_residual: for Lanczos, ``||G v - theta v||`` of the smallest Ritz pair: ``theta`` is
    an upper bound on ``lambda_min`` and some eigenvalue lies within this distance of it.
    """

    eigenvalues: np.ndarray
    complete: bool
    method: str
    lambda_max: float
    lambda_min: float
    condition_number: float
    effective_rank: float | None
    lambda_min_residual: float = 0.0


def condition_number(eigenvalues: np.ndarray, rtol: float = 1e-12) -> float:
    """``lambda_max / lambda_min``; ``inf`` when ``lambda_min <= rtol * lambda_max`` (numerically singular)."""
    lo, hi = float(np.min(eigenvalues)), float(np.max(eigenvalues))
    return float("inf") if lo <= rtol * hi else hi / lo


def effective_rank(eigenvalues: np.ndarray) -> float:
    """Roy & Vetterli's effective rank ``exp(H(p))``, ``p = lambda / sum(lambda)`` (negatives clipped)."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None)
    if lam.sum() <= 0:
        return 0.0
    p = lam[lam > 0] / lam.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def eigenspectrum(g, k: int = 20, dense_limit: int = 4096, smallest: bool = True, tol: float = 1e-6,
                  maxiter: int | None = None, max_bytes: int | None = None, preconditioner="auto",
                  smallest_maxiter: int = 200) -> Spectrum:
    """Eigenvalues of a symmetric PSD GTK ``g`` (``GTK``, array, sparse or LinearOperator) ``[n, n]``.

    ``n <= dense_limit`` and explicit: all eigenvalues (``numpy.linalg.eigvalsh``). Otherwise the ``k``
    largest by Lanczos (``eigsh``, ``which="LA"``) and, when ``smallest``, the smallest Ritz value: by
    preconditioned LOBPCG (block of 4, at most ``smallest_maxiter`` iterations) when a preconditioner is
    given or the ``GTK`` carries one (``"auto"``, lattice operator GTKs), else by ``eigsh(which="SA")``.
    Either way it is an upper bound on ``lambda_min``; ``lambda_min_residual`` says how far it may be off.
    """
    m = unwrap(g)
    n = m.shape[0]
    if n <= dense_limit and (is_explicit(m) or n <= 512):
        lam = np.linalg.eigvalsh(to_dense(m, max_bytes))[::-1]
        return Spectrum(lam, True, "eigh", float(lam[0]), float(lam[-1]), condition_number(lam), effective_rank(lam))
    if not 1 <= k < n - 1:
        raise InputError(f"k must be in [1, n-2] = [1, {n - 2}] for Lanczos, got {k}")
    op = as_operator(m)
    top = np.sort(eigsh(op, k=k, which="LA", tol=tol, maxiter=maxiter, return_eigenvectors=False))[::-1]
    lo, res, method = float("nan"), float("nan"), "lanczos"
    if smallest:
        precond = getattr(g, "preconditioner", None) if preconditioner == "auto" else preconditioner
        if precond is not None:
            x0 = np.random.default_rng(0).standard_normal((n, 4))
            with warnings.catch_warnings():  # "not reaching the requested tolerance": the residual says it
                warnings.filterwarnings("ignore", message="Exited", category=UserWarning)
                val, vec = lobpcg(op, x0, M=precond, largest=False, tol=tol, maxiter=smallest_maxiter)
            i = int(np.argmin(val))
            val, vec, method = val[i : i + 1], vec[:, i : i + 1], "lanczos+lobpcg"
        else:
            val, vec = eigsh(op, k=1, which="SA", tol=tol, maxiter=maxiter)
        lo = float(val[0])
        res = float(np.linalg.norm(op @ vec[:, 0] - lo * vec[:, 0]) / np.linalg.norm(vec[:, 0]))
    cond = float("nan") if not smallest else condition_number(np.array([lo, top[0]]))
    return Spectrum(top, False, method, float(top[0]), lo, cond, None, res)


@dataclass
class FourierSpectrum:
    """``S(omega) = (1/n) e_omega^H G e_omega`` on a lattice of ``shape`` (``fft`` frequency order).

    values: ``shape`` array; freqs: per axis, integer cycles across the lattice (``fftfreq * n_axis``);
    radius/radial: for 1D the non-negative frequencies and ``S`` there; for 2D ``S`` averaged over
    rings of integer ``round(|omega|)``.
    """

    values: np.ndarray
    freqs: tuple[np.ndarray, ...]
    radius: np.ndarray
    radial: np.ndarray


def offset_sums(g, shape: tuple[int, ...]) -> np.ndarray:
    """``c(Delta) = sum_i G[i, i + Delta]`` with offsets taken modulo ``shape`` (row-major points)."""
    m = unwrap(g)
    if not is_explicit(m):
        raise InputError("fourier_spectrum needs the GTK's entries: compute it with implementation='structured'")
    coo = sp.coo_matrix(m)
    i = np.stack(np.unravel_index(coo.row, shape))
    j = np.stack(np.unravel_index(coo.col, shape))
    delta = np.ravel_multi_index(tuple((j - i) % np.array(shape)[:, None]), shape)
    return np.bincount(delta, weights=coo.data, minlength=int(np.prod(shape))).reshape(shape)


def fourier_spectrum(g, shape: int | tuple[int, ...]) -> FourierSpectrum:
    """Exact Fourier spectrum of a GTK on a regular 1D or 2D lattice of ``shape`` (points row-major).

    ``S = ifftn(c)`` with ``c`` the offset-summed kernel (:func:`offset_sums`): ``O(nnz(G) + n log n)``.
    Equals ``diag(F G F^H) / n`` for the DFT matrix ``F``. Real for a symmetric ``G``.
    """
    shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    m = unwrap(g)
    if len(shape) not in (1, 2) or int(np.prod(shape)) != m.shape[0]:
        raise InputError(f"lattice shape {shape} must be 1D or 2D with prod(shape) == n = {m.shape[0]}")
    s = np.fft.ifftn(offset_sums(m, shape)).real
    freqs = tuple(np.fft.fftfreq(n) * n for n in shape)
    if len(shape) == 1:
        keep = freqs[0] >= 0
        return FourierSpectrum(s, freqs, freqs[0][keep], s[keep])
    r = np.rint(np.hypot(*np.meshgrid(*freqs, indexing="ij"))).astype(int)
    counts = np.bincount(r.ravel())
    radial = np.bincount(r.ravel(), weights=s.ravel()) / np.maximum(counts, 1)
    ok = counts > 0
    return FourierSpectrum(s, freqs, np.arange(len(counts))[ok], radial[ok])
