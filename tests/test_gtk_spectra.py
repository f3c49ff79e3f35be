"""Fourier spectrum vs a dense DFT, CG bound vs Cholesky, Lanczos vs eigh, and input errors."""

import numpy as np
import pytest
import torch

from _gtk_models import one_torch_thread, small_field  # noqa: F401 (autouse fixture)
from gridfield.errors import InputError
from gridfield.gtk import bound, conjugate_gradient, eigenspectrum, fourier_spectrum, gtk
from gridfield.gtk.dynamics import frequency_energy


def lattice(shape):
    axes = [torch.linspace(-1, 1, s, dtype=torch.float64) for s in shape]
    grids = torch.meshgrid(*axes, indexing="ij")  # row-major: last axis fastest
    return torch.stack([g.reshape(-1) for g in grids[::-1]], 1)  # coordinate 0 = last axis


def dft_matrix(shape):
    """Dense multi-dimensional DFT matrix ``F[omega, i] = exp(-2 pi i omega . i / shape)`` (row-major)."""
    idx = np.stack(np.unravel_index(np.arange(int(np.prod(shape))), shape), 1)  # [n, d]
    phase = sum(np.outer(idx[:, a], idx[:, a]) / shape[a] for a in range(len(shape)))
    return np.exp(-2j * np.pi * phase)


@pytest.mark.parametrize("shape", [(40,), (12, 10)])
@pytest.mark.parametrize("name", ["dense", "hash"])
def test_fourier_spectrum_equals_dense_dft(shape, name):
    field = small_field(name, "mlp", dim=len(shape)) if len(shape) == 2 else small_field(name, "linear", dim=1)
    x = lattice(shape)
    g = gtk(field, x)
    fs = fourier_spectrum(g, shape)
    f = dft_matrix(shape)
    dense = np.real(np.diag(f @ g.dense() @ f.conj().T)) / x.shape[0]
    np.testing.assert_allclose(fs.values.ravel(), dense, rtol=1e-10, atol=1e-12 * dense.max())
    assert fs.radial.shape == fs.radius.shape and fs.radius[0] == 0
    if len(shape) == 2:  # ring 0 is the DC term alone
        assert fs.radial[0] == pytest.approx(dense[0])


def test_cg_bound_equals_cholesky_and_lanczos_extremes():
    field = small_field("hash", "identity", seed=4)
    x = torch.rand(150, 2, dtype=torch.float64) * 2 - 1
    y = torch.randn(150, 2, dtype=torch.float64)
    dense = gtk(field, x).dense() + 0.05 * np.eye(150)  # well conditioned
    chol = bound(dense, y, method="cholesky")
    cg = bound(dense, y, method="cg", tol=1e-12)
    assert cg.value == pytest.approx(chol.value, rel=1e-9) and cg.normalized == pytest.approx(chol.normalized, rel=1e-9)
    assert cg.lambda_max == pytest.approx(chol.lambda_max, rel=1e-8)
    assert chol.lambda_min <= cg.lambda_min <= chol.lambda_min * (1 + 1e-3)  # Ritz value: an upper bound
    direct = np.sqrt(2 * np.mean([yc @ np.linalg.solve(dense, yc) for yc in y.numpy().T]) / 150)
    assert chol.value == pytest.approx(direct, rel=1e-10)
    op = gtk(field, x, implementation="operator")  # singular here: more points than grid rows
    b_op = bound(op, y, method="cg")
    b_ref = bound(gtk(field, x).dense(), y, method="cholesky")
    assert b_op.singular and b_ref.singular and "ridge" in b_op.note and b_op.floored and b_ref.floored
    assert b_op.value == pytest.approx(b_ref.value, rel=1e-5) and b_op.ridge == pytest.approx(b_ref.ridge, rel=1e-6)


def test_eigenvalue_floor_is_continuous_and_exact_above_the_floor():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    y = rng.standard_normal(40)

    def kernel(lam_min):  # eigenvalues 1 .. 2 and one lam_min, mean diagonal ~1.5
        lam = np.linspace(1, 2, 40)
        lam[0] = lam_min
        return (q * lam) @ q.T, lam

    def exact(lam_min, floor_abs):  # y^T (G + max(0, floor - lam_min) I)^-1 y, in the eigenbasis
        g, lam = kernel(lam_min)
        c = q.T @ y
        return np.sqrt(2 * np.sum(c**2 / (lam + max(0.0, floor_abs - lam_min))) / 40), np.trace(g) / 40

    floor = 1e-3
    values = []
    for lam_min in (3e-3, 1.6e-3, 1.5e-3, 1.4e-3, 1e-3, 1e-5, 0.0):
        g, _ = kernel(lam_min)
        b = bound(g, y, default_ridge=floor)
        s = np.trace(g) / 40
        ref, _ = exact(lam_min, floor * s)
        assert b.value == pytest.approx(ref, rel=1e-8)
        assert b.floored == (lam_min < floor * s) and (b.ridge == 0.0) == (not b.floored)
        values.append(b.value)
    # above the floor the bound is the plain inverse's; below it stays at the floor's value
    assert values[0] < values[1] < values[2] and values[-1] == pytest.approx(values[-2], rel=1e-4)  # s moves a little
    near = [bound(kernel(v)[0], y, default_ridge=floor).value for v in (1.5e-3 * (1 + 1e-6), 1.5e-3 * (1 - 1e-6))]
    assert near[0] == pytest.approx(near[1], rel=1e-4)  # no jump where the floor switches on
    assert bound(kernel(1e-5)[0], y, ridge=0.0).value == pytest.approx(exact(1e-5, 0.0)[0], rel=1e-6)
    with pytest.raises(InputError, match="not positive definite"):
        bound(kernel(-1e-3)[0], y, ridge=0.0)


def test_lanczos_matches_eigh_and_solver():
    field = small_field("dense", "identity", seed=5)
    x = torch.rand(60, 2, dtype=torch.float64) * 2 - 1
    g = gtk(field, x)
    full = eigenspectrum(g)
    lan = eigenspectrum(g.linear_operator(), k=5, dense_limit=10)
    assert full.complete and not lan.complete
    np.testing.assert_allclose(lan.eigenvalues, full.eigenvalues[:5], rtol=1e-8)
    # the smallest Ritz value bounds lambda_min from above and is an eigenvalue to within its residual
    assert lan.lambda_min >= full.lambda_min - 1e-12
    assert np.abs(full.eigenvalues - lan.lambda_min).min() <= lan.lambda_min_residual + 1e-10
    a = g.dense() + np.eye(60)
    b = np.random.default_rng(0).normal(size=60)
    sol, its, res, _ = conjugate_gradient(lambda v: a @ v, b, tol=1e-12)
    np.testing.assert_allclose(sol, np.linalg.solve(a, b), rtol=1e-9)


def test_frequency_energy_parseval():
    r = np.random.default_rng(1).normal(size=(3, 12 * 10, 2))
    radius, energy = frequency_energy(r, (12, 10))
    np.testing.assert_allclose(energy.sum(1), (r**2).sum((1, 2)), rtol=1e-12)


def test_spectra_and_bound_errors():
    g = np.eye(6)
    with pytest.raises(InputError, match=r"shape \[n\] or \[n, c\] with n = 6"):
        bound(g, np.ones(5))
    with pytest.raises(InputError, match="NaN"):
        bound(g, np.full(6, np.nan))
    with pytest.raises(InputError, match="square"):
        bound(np.ones((3, 4)), np.ones(3))
    with pytest.raises(InputError, match="method must be"):
        bound(g, np.ones(6), method="lu")
    with pytest.raises(InputError, match=r"prod\(shape\) == n = 6"):
        fourier_spectrum(g, (2, 2))
    field = small_field("dense", "identity")
    op = gtk(field, torch.rand(10, 2, dtype=torch.float64), implementation="operator")
    with pytest.raises(InputError, match="structured"):
        fourier_spectrum(op, 10)
    with pytest.raises(InputError, match="dense 10 x 10 GTK"):
        op.dense(max_bytes=100)
