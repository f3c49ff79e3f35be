"""Bracketing ``lambda_min`` of a large GTK (matrix-free, with the lattice preconditioner ``M``).

Rounds of shifted PCG solves ``(G - sigma I) x = b`` give both ends:

* Lower end. For ``sigma < lambda_min(M)`` and ``mu(sigma) = lambda_min((M - sigma I)^-1 (G - sigma I))``,
  ``x^T (G - sigma) x >= mu (m - sigma) |x|^2`` gives

      ``lambda_min(G) >= L(sigma) = sigma + mu(sigma) (lambda_min(M) - sigma)``,

  which is tight as ``sigma -> lambda_min(G)`` (then ``mu -> 0``). ``sigma = 0`` is the estimate of
  :func:`gridfield.gtk.bound.bound` (``theta_min(M^-1 G) lambda_min(M)``). ``mu`` is taken as PCG's
  smallest Ritz value, which approaches it from above, so ``L`` is an estimate, as tight as PCG has
  resolved the bottom of the spectrum.
* Upper end. The solution ``x = (G - sigma I)^-1 b`` is a step of shifted inverse iteration, and its
  Rayleigh quotient ``x^T G x / x^T x >= lambda_min`` holds exactly; with ``sigma`` just below
  ``lambda_min`` the step all but isolates the lowest eigenvector. The next round solves with ``b = x``.
  Optionally (``lobpcg_maxiter > 0``) preconditioned LOBPCG's Ritz value is also taken.
* After the first round ``sigma`` goes halfway into the bracket. A round whose PCG meets a direction with
  ``p^T (G - sigma I) p <= 0`` proves ``lambda_min(G) < sigma`` exactly: the upper end becomes ``sigma``.
  Either way the bracket about halves per round. With ``b`` the inverse-iteration vector (mostly the
  lowest eigenvector) such a direction shows at once when ``sigma > lambda_min``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gridfield.errors import InputError
from gridfield.gtk._matrix import as_operator, unwrap
from gridfield.gtk.bound import conjugate_gradient
from gridfield.gtk.spectra import eigenspectrum


@dataclass
class LambdaMinBracket:
    """``lower <= lambda_min(G) <= upper`` (``upper`` exact, ``lower`` an estimate; see the module doc).

    ratio: ``upper / lower``; upper_residual: ``||G v - theta v|| / ||v||`` of the vector giving ``upper`` (an
    eigenvalue lies within it of ``upper``); rounds: per round ``(sigma, L(sigma), iterations, negative
    curvature met, Rayleigh quotient)``.
    """

    lower: float
    upper: float
    ratio: float
    upper_residual: float
    rounds: list[tuple[float, float, int, bool, float]] = field(default_factory=list)


def lambda_min_bracket(g, preconditioner="auto", rounds: int = 8, rtol: float = 1e-3, tol: float = 1e-8,
                       maxiter: int = 1000, lobpcg_maxiter: int = 0, lobpcg_tol: float = 1e-8,
                       seed: int = 0) -> LambdaMinBracket:
    """Bracket ``lambda_min`` of a PSD GTK ``g`` ``[n, n]`` (operator ``GTK`` with a lattice preconditioner, or
    any matrix with ``preconditioner=`` an :class:`~gridfield.gtk.precond.SeparablePreconditioner`).

    rounds: shifted-PCG rounds after the unshifted one (stops early once ``upper <= (1 + rtol) lower``, or
    when ``L`` no longer grows); tol / maxiter: of each PCG; lobpcg_*: an extra LOBPCG run for the upper end
    (0: none). Not differentiable.
    """
    precond = getattr(g, "preconditioner", None) if preconditioner == "auto" else preconditioner
    if precond is None or not hasattr(precond, "shifted"):
        raise InputError("lambda_min_bracket needs a shiftable preconditioner (the lattice one: an operator GTK "
                         "of a full 2D pixel lattice with a dense or hash grid)")
    op = as_operator(unwrap(g))
    n = op.shape[0]
    upper, residual = float("inf"), float("nan")
    if lobpcg_maxiter > 0:
        spec = eigenspectrum(g, k=1, dense_limit=0, tol=lobpcg_tol, preconditioner=precond,
                             smallest_maxiter=lobpcg_maxiter)
        upper, residual = float(spec.lambda_min), float(spec.lambda_min_residual)
    b = np.random.default_rng(seed).standard_normal(n)
    m_min, sigma, lower, log = precond.eig_min, 0.0, 0.0, []
    for _ in range(rounds + 1):
        shifted = precond.shifted(-sigma)
        matvec = (lambda v, s=sigma: op.matmat(v) - s * v)
        x, its, _, (theta, _), negative = conjugate_gradient(matvec, b, tol, maxiter, shifted.matmat,
                                                             return_curvature=True)
        if negative:  # G - sigma I is not positive definite: lambda_min < sigma, exactly
            if sigma < upper:
                upper, residual = sigma, float("nan")
            log.append((sigma, float("nan"), its, True, float("nan")))
            if upper <= lower * (1 + rtol):
                break
            sigma = lower + 0.5 * (upper - lower)
            continue
        gx = op.matmat(x[:, None])[:, 0]
        xx = float(x @ x)
        rq = float(x @ gx) / xx  # Rayleigh quotient: an upper bound on lambda_min
        if rq < upper:
            upper, residual = rq, float(np.linalg.norm(gx - rq * x) / np.sqrt(xx))
        bound_here = sigma + theta * (m_min - sigma)
        log.append((sigma, bound_here, its, False, rq))
        if bound_here <= lower * (1 + 1e-3):
            lower = max(lower, bound_here)
            break
        lower = bound_here
        if upper <= lower * (1 + rtol):
            break
        # halfway into the bracket: either L rises past it, or negative curvature proves lambda_min < sigma
        sigma = min(lower + 0.5 * (upper - lower), 0.999 * m_min)
        b = x / np.sqrt(xx)  # inverse iteration: the next solve sharpens the lowest eigenvector
    return LambdaMinBracket(lower, upper, upper / lower if lower > 0 else float("inf"), residual, log)
