"""Theorem 3's generalization bound ``B = sqrt(2 y^T G^-1 y / n)``, by Cholesky or conjugate gradients.

For ``y`` with ``c`` channels the quadratic form is averaged over channels (``G`` is channel-averaged).
Both the raw value and the value with ``G`` normalized to unit mean diagonal (``trace(G)/n = 1``) are
reported: ``B_norm = B * sqrt(trace(G)/n)``. By default the spectrum is floored: when ``lambda_min(G)`` is
below ``floor = default_ridge * trace(G)/n`` the ridge ``lambda = floor - lambda_min`` is added, so that
``G + lambda I`` has ``lambda_min = floor``. This is continuous in ``G`` (a kernel just above the floor and one
just below it get nearly the same bound), unlike a switch that adds a fixed ridge only to singular kernels.
A fixed relative ridge (``lambda = ridge * trace(G)/n``) can be forced instead; ``ridge=0`` is the plain inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
from scipy.sparse.linalg import eigsh

from gridfield.errors import InputError
from gridfield.gtk._matrix import as_operator, diagonal, is_explicit, to_dense, unwrap


@dataclass
class Bound:
    """The bound and how it was obtained (``lambda_*`` are of the raw, unnormalized ``G``).

    lambda_min_method: ``"eigh"`` (exact), ``"cg-lanczos"`` (smallest Ritz value of the Lanczos
    tridiagonal that CG builds for free: an upper bound on ``lambda_min``, exact in the limit) or
    ``"pcg-lower"`` (preconditioned CG: ``theta_min(M^-1 G) * lambda_min(M)``, a lower estimate of
    ``lambda_min``, since ``lambda_min(G) >= lambda_min(M^-1 G) lambda_min(M)`` and ``theta_min`` is the
    smallest Ritz value of ``M^-1 G``; ``lambda_max`` then comes from Lanczos on ``G``).
    quad: ``mean_c y_c^T (G + ridge_abs I)^-1 y_c``; a CG value is a lower bound that increases to it.
    singular: ``lambda_min <= singular_rtol * lambda_max`` (information only; the floor decides the ridge).
    floored: the default eigenvalue floor added a ridge (``ridge_abs = floor - lambda_min``).
    """

    value: float
    normalized: float
    quad: float
    lambda_min: float
    lambda_max: float
    lambda_min_method: str
    singular: bool
    ridge: float
    ridge_abs: float
    mean_diag: float
    method: str
    iterations: int = 0
    relative_residual: float = 0.0
    note: str = ""
    floored: bool = False


def _check_y(y, n: int) -> np.ndarray:
    y = np.asarray(y.detach().cpu().double().numpy() if hasattr(y, "detach") else y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise InputError(f"targets y must have shape [n] or [n, c] with n = {n} (the GTK size), got {y.shape}")
    if not np.isfinite(y).all():
        raise InputError("targets y contain NaN or infinite values")
    return y


def conjugate_gradient(matvec, b: np.ndarray, tol: float = 1e-8, maxiter: int = 1000, precond=None,
                       return_curvature: bool = False):
    """Solve ``A X = B`` (``A`` SPD) by (preconditioned) CG, each column of ``B`` ``[n]`` or ``[n, c]``
    independently but with one (multi-column) ``matvec`` per iteration.

    precond: ``r -> M^-1 r`` for ``[n, c]`` blocks (SPD ``M``), or ``None``. Also returns the extreme
    eigenvalues of the Lanczos tridiagonal built from the first column's CG coefficients: Ritz values of
    ``M^-1 A`` (of ``A`` without a preconditioner), estimates of its ``lambda_min`` from above and
    ``lambda_max`` from below. Returns ``(X, iterations, max relative residual, (ritz_min, ritz_max))``;
    the residual is the true ``||B - A X|| / ||B||`` per column (not the preconditioned one).
    return_curvature: also return whether a direction with ``p^T A p <= 0`` was met (then ``A`` is not
    positive definite: that column stopped there).
    """
    one = b.ndim == 1
    b = b[:, None] if one else b
    x, r = np.zeros_like(b), b.copy()
    bn = np.linalg.norm(b, axis=0)
    bn[bn == 0] = 1.0
    z = r if precond is None else precond(r)
    p, rr = z.copy(), (r * z).sum(0)
    alphas, betas, it = [], [], 0
    active, negative = np.ones(b.shape[1], bool), False
    for it in range(1, maxiter + 1):  # noqa: B007 - the count is returned after the loop
        ap = matvec(p)
        ap = ap[:, None] if ap.ndim == 1 else ap
        pap = (p * ap).sum(0)
        negative |= bool((active & (pap <= 0)).any())
        active &= pap > 0
        alpha = np.where(active, rr / np.where(active, pap, 1.0), 0.0)
        x += alpha * p
        r -= alpha * ap
        z = r if precond is None else precond(r)
        rr_new = (r * z).sum(0)
        beta = np.where(active, rr_new / np.where(rr > 0, rr, 1.0), 0.0)
        if active[0]:
            alphas.append(alpha[0])
            betas.append(beta[0])
        rr = rr_new
        rn = np.linalg.norm(r, axis=0)
        active &= rn > tol * bn
        if not active.any():
            break
        p = z + beta * p
    a, bt = np.array(alphas), np.array(betas)
    if len(a) == 0:
        ritz = np.array([np.nan])
    elif len(a) == 1:
        ritz = 1 / a
    else:
        diag = 1 / a + np.concatenate([[0.0], bt[:-1] / a[:-1]])
        ritz = sla.eigvalsh_tridiagonal(diag, np.sqrt(bt[:-1]) / a[:-1])
    res = float((np.linalg.norm(r, axis=0) / bn).max())
    out = (x[:, 0] if one else x), it, res, (float(ritz.min()), float(ritz.max()))
    return (*out, negative) if return_curvature else out


def bound(g, y, method: str = "auto", ridge: float | None = None, singular_rtol: float = 1e-10,
          default_ridge: float = 1e-6, tol: float = 1e-8, maxiter: int = 2000, dense_limit: int = 8192,
          max_bytes: int | None = None, preconditioner="auto") -> Bound:
    """``B = sqrt(2 mean_c y_c^T G^-1 y_c / n)`` for a GTK ``g`` ``[n, n]`` and targets ``y`` ``[n]``/``[n, c]``.

    method: ``"cholesky"`` (dense; exact ``lambda_min`` by ``eigh``), ``"cg"`` (matrix-free) or
    ``"auto"`` (Cholesky up to ``dense_limit`` points with explicit entries). ridge: a fixed relative ridge
    (``lambda = ridge * trace(G)/n``; ``0``: none). ``None`` (default): the eigenvalue floor
    ``default_ridge * trace(G)/n``, ridge ``max(0, floor - lambda_min)`` (with CG, ``lambda_min`` is the
    solver's estimate, so the floor is approximate there); the note says when it acted.
    preconditioner (CG only): ``"auto"`` uses the one an operator ``GTK`` of a 2D lattice carries
    (:mod:`gridfield.gtk.precond`), ``None`` none, or a ``LinearOperator``/callable applying ``M^-1``.
    """
    m = unwrap(g)
    n = m.shape[0]
    y = _check_y(y, n)
    if method not in ("auto", "cholesky", "cg"):
        raise InputError(f"method must be 'auto', 'cholesky' or 'cg', got {method!r}")
    if method == "auto":
        method = "cholesky" if n <= dense_limit and is_explicit(m) else "cg"
    s = float(diagonal(m).mean())
    if s <= 0:
        raise InputError("the GTK is zero (trace 0): no grid feature influences these points")
    if method == "cholesky":
        return _bound_cholesky(to_dense(m, max_bytes), y, s, ridge, singular_rtol, default_ridge)
    return _bound_cg(m, y, s, ridge, singular_rtol, default_ridge, tol, maxiter, _resolve_precond(g, preconditioner))


def _finish(quad: float, n: int, s: float, **kw) -> Bound:
    b = float(np.sqrt(2 * max(quad, 0.0) / n))
    return Bound(value=b, normalized=float(b * np.sqrt(s)), quad=quad, mean_diag=s, **kw)


def _bound_cholesky(gd, y, s, ridge, rtol, default_ridge) -> Bound:
    n = gd.shape[0]
    lam = np.linalg.eigvalsh(gd)  # all of them: as fast as two subset calls, and robust to busy BLAS threads
    lam_min, lam_max = float(lam[0]), float(lam[-1])
    singular = lam_min <= rtol * lam_max
    rel, note = _ridge(ridge, default_ridge, lam_min, s)
    try:
        factor = sla.cho_factor(gd + rel * s * np.eye(n), lower=True)
    except np.linalg.LinAlgError:
        raise InputError(f"G + {rel:g} trace(G)/n I is not positive definite (lambda_min = {lam_min:.3g}): "
                         "use a positive ridge or the default eigenvalue floor (ridge=None)") from None
    quad = float((y * sla.cho_solve(factor, y)).sum(0).mean())
    return _finish(quad, n, s, lambda_min=lam_min, lambda_max=lam_max, lambda_min_method="eigh",
                   singular=singular, ridge=rel, ridge_abs=rel * s, method="cholesky", note=note,
                   floored=ridge is None and rel > 0)


def _ridge(ridge: float | None, floor: float, lam_min: float, s: float) -> tuple[float, str]:
    """Relative ridge to add and a note: ``ridge`` when forced, else ``max(0, floor - lambda_min / s)``."""
    if ridge is not None:
        return float(ridge), ""
    rel = max(0.0, floor - lam_min / s)
    if rel == 0.0:
        return 0.0, ""
    return rel, (f"lambda_min = {lam_min:.3g} is below the eigenvalue floor {floor:g} trace(G)/n: "
                 f"ridge lambda = {rel:.3g} trace(G)/n added (pass ridge=0 for the plain inverse)")


def _resolve_precond(g, preconditioner):
    """``preconditioner="auto"``: the one a ``GTK`` carries (lattice operator GTKs), else none."""
    if preconditioner == "auto":
        return getattr(g, "preconditioner", None)
    if preconditioner is None or preconditioner is False:
        return None
    if not hasattr(preconditioner, "matvec") and not callable(preconditioner):
        raise InputError("preconditioner must be 'auto', None, a LinearOperator or a callable r -> M^-1 r")
    return preconditioner


def _apply(precond, shift: float):
    """``r [n, c] -> M^-1 r`` for ``M`` (or ``M + shift I`` when the preconditioner can shift itself)."""
    if shift and hasattr(precond, "shifted"):
        precond = precond.shifted(shift)
    if hasattr(precond, "matmat"):
        return precond.matmat
    return lambda r: np.stack([precond(c) for c in r.T], 1)


def _bound_cg(m, y, s, ridge, rtol, default_ridge, tol, maxiter, precond=None) -> Bound:
    n, op = m.shape[0], as_operator(m)

    def solve(rel):
        mv = (lambda v: op.matmat(v) + rel * s * v) if rel else op.matmat
        out = conjugate_gradient(mv, y, tol, maxiter, None if precond is None else _apply(precond, rel * s))
        return out, float((y * out[0]).sum(0).mean())

    def extremes(sol, rel):
        """``lambda_min`` estimate and ``lambda_max`` of ``G`` (not of ``G + ridge``)."""
        lo, hi = sol[3]
        if precond is None:  # Ritz values of G itself: lo >= lambda_min (upper estimate)
            return lo - rel * s, hi - rel * s
        # Ritz values of M^-1 (G + ridge): lambda_min(G + ridge) >= lambda_min(M^-1 (G + ridge)) lambda_min(M)
        eig_m = getattr(precond, "eig_min", float("nan")) + (rel * s if hasattr(precond, "shifted") else 0.0)
        top = float(eigsh(op, k=1, which="LA", tol=1e-4, return_eigenvectors=False)[0])
        return lo * eig_m - rel * s, top

    rel = ridge or 0.0
    sol, quad = solve(rel)
    lo, hi = extremes(sol, rel)
    note = ""
    if ridge is None:
        rel, note = _ridge(None, default_ridge, lo, s)
        if rel:
            sol, quad = solve(rel)
            lo, hi = extremes(sol, rel)  # the ridge run's Lanczos values are reliable
    singular = lo <= rtol * hi
    its, res = sol[1], sol[2]
    if res > tol:
        note = (note + "; " if note else "") + f"CG stopped at relative residual {res:.2g} after {its} iterations"
    how = "cg-lanczos" if precond is None else "pcg-lower"
    return _finish(quad, n, s, lambda_min=lo, lambda_max=hi, lambda_min_method=how, singular=singular,
                   ridge=rel, ridge_abs=rel * s, method="cg" if precond is None else "pcg", iterations=its,
                   relative_residual=res, note=note, floored=ridge is None and rel > 0)
