"""The separable lattice preconditioner: exact where the separable structure is exact, and PCG/LOBPCG
agree with dense Cholesky/eigh on small lattices."""

import numpy as np
import pytest
import torch

from _gtk_models import one_torch_thread  # noqa: F401 (autouse fixture)
from gridfield.data.images import pixel_coords
from gridfield.gtk import bound, eigenspectrum, gtk
from gridfield.gtk.precond import lattice_axes
from gridfield.models import build_field


def field_of(spec: dict, out_dim: int = 1, decoder: str = "linear"):
    torch.manual_seed(0)
    return build_field(in_dim=2, out_dim=out_dim, decoder=decoder, **spec).double()


def test_lattice_axes_detects_pixel_lattices_only():
    x = pixel_coords(5, 7)
    xs, ys = lattice_axes(x)
    assert np.allclose(xs, np.linspace(-1, 1, 7), atol=1e-6) and np.allclose(ys, np.linspace(-1, 1, 5), atol=1e-6)
    assert lattice_axes(x[torch.randperm(35, generator=torch.Generator().manual_seed(0))]) is None
    assert lattice_axes(x[:-1]) is None
    assert lattice_axes(torch.rand(10, 3)) is None


def test_single_dense_level_is_inverted_exactly():
    """One dense level on a lattice: G = alpha K_y kron K_x exactly, so M = G and M^-1 G v = v."""
    field = field_of(dict(model="dense", resolutions=[7], features_per_level=2))
    x = pixel_coords(12, 10).double()
    g = gtk(field, x, implementation="operator")
    assert g.preconditioner is not None
    v = np.random.default_rng(0).standard_normal(x.shape[0])
    gv = g.matrix @ v
    # G is singular here (49 nodes < 120 points): compare on the range of G
    assert np.allclose(g.matrix @ (g.preconditioner @ gv), gv, rtol=1e-8, atol=1e-10 * np.abs(gv).max())


@pytest.mark.parametrize("spec", [
    dict(model="hash", n_levels=6, features_per_level=2, log2_hashmap_size=8, base_resolution=4, per_level_scale=1.6),
    dict(model="dense", resolutions=[5, 9, 17, 33], features_per_level=2),
])
def test_pcg_bound_equals_cholesky_with_fewer_iterations(spec):
    """Hash (dense and hashed levels, tcnn border aliasing) and multi-resolution dense: PCG == Cholesky,
    the lower lambda_min estimate is below the exact one, and preconditioning cuts the iterations."""
    field = field_of(spec, out_dim=3)
    x = pixel_coords(24, 20).double()
    y = np.random.default_rng(1).random((x.shape[0], 3))
    g = gtk(field, x, implementation="operator")
    exact = bound(g.dense(), y, method="cholesky", ridge=1e-6)
    pcg = bound(g, y, method="cg", ridge=1e-6, tol=1e-10, maxiter=3000)
    plain = bound(g, y, method="cg", ridge=1e-6, tol=1e-10, maxiter=3000, preconditioner=None)
    assert pcg.method == "pcg" and plain.method == "cg"
    assert pcg.value == pytest.approx(exact.value, rel=1e-7)
    assert plain.value == pytest.approx(exact.value, rel=1e-6)
    assert pcg.iterations < plain.iterations / 2
    assert pcg.lambda_min <= exact.lambda_min * (1 + 1e-6)
    assert pcg.lambda_max == pytest.approx(exact.lambda_max, rel=1e-3)


def test_lobpcg_smallest_eigenvalue_matches_eigh():
    field = field_of(dict(model="hash", n_levels=4, features_per_level=2, log2_hashmap_size=10, base_resolution=8,
                          per_level_scale=1.5))
    x = pixel_coords(16, 16).double()
    g = gtk(field, x, implementation="operator")
    lam = np.linalg.eigvalsh(g.dense())
    assert lam[0] > 1e-8 * lam[-1]  # non-singular, so a relative comparison means something
    spec = eigenspectrum(g, k=3, dense_limit=0, tol=1e-6, smallest_maxiter=300)
    assert spec.method == "lanczos+lobpcg"
    assert spec.lambda_min >= lam[0] * (1 - 1e-8)
    assert spec.lambda_min == pytest.approx(lam[0], rel=1e-3)
    assert np.allclose(spec.eigenvalues, lam[::-1][:3], rtol=1e-6)


def test_no_preconditioner_off_lattice_or_for_other_grids():
    spec = dict(model="hash", n_levels=4, features_per_level=2, log2_hashmap_size=10, base_resolution=4)
    g = gtk(field_of(spec), torch.rand(50, 2, dtype=torch.float64) * 2 - 1, implementation="operator")
    assert g.preconditioner is None and g.info["preconditioner"] == "none"
    g = gtk(field_of(dict(model="planes", resolutions=[8], features_per_level=2)), pixel_coords(6, 6).double(),
            implementation="operator")
    assert g.preconditioner is None


def test_separable_levels_reproduce_the_dense_support():
    """A dense level's support on a lattice is the Kronecker product of its 1D axis hats; grids without the
    structure (planes, a subclass with its own support) say None."""
    from gridfield.grids import DenseGrid, PlaneGrid

    grid = DenseGrid(2, [3, 5], features_per_level=1)
    x = pixel_coords(6, 4).double()
    xs, ys = lattice_axes(x)
    for level, term in zip(grid.separable_levels(), grid.support(x)):
        a, b = level.rows
        dense = np.zeros((x.shape[0], b - a))
        np.add.at(dense, (np.arange(x.shape[0])[:, None], term.index.numpy() - a), term.weight.double().numpy())
        axis = []
        for t in (ys, xs):
            cols, w, v = level.axis(t)
            m = np.zeros((len(t), v))
            np.add.at(m, (np.arange(len(t))[:, None], cols), w)
            axis.append(m)
        assert np.allclose(np.kron(*axis), dense, atol=1e-6)
    assert PlaneGrid(2, [4]).separable_levels() is None

    class Flipped(DenseGrid):
        def support(self, x):
            return super().support(x.flip(1))

    assert Flipped(2, [4]).separable_levels() is None


def test_lambda_min_bracket_contains_and_tightens_around_the_exact_value():
    """Shifted PCG rounds raise the lower estimate towards lambda_min; LOBPCG's upper end is a Rayleigh
    quotient; both against eigh. The unshifted estimate (what bound() reports) is much looser."""
    from gridfield.gtk import lambda_min_bracket

    field = field_of(dict(model="hash", n_levels=6, features_per_level=2, log2_hashmap_size=9, base_resolution=4,
                          per_level_scale=1.5))
    x = pixel_coords(20, 20).double()
    g = gtk(field, x, implementation="operator")
    lam = np.linalg.eigvalsh(g.dense())
    assert lam[0] > 1e-9 * lam[-1]
    br = lambda_min_bracket(g, rounds=12, rtol=1e-4)
    assert br.upper >= lam[0] * (1 - 1e-10) and br.lower <= lam[0] * (1 + 1e-6)
    assert br.ratio < 1 + 1e-3 and abs(br.upper - lam[0]) <= br.upper_residual + 1e-12 * lam[-1]
    first = br.rounds[0][1]
    assert first < br.lower and lam[0] / first > 1.2  # the rounds did the tightening
    lows = [r[1] for r in br.rounds if not r[3]]
    assert lows == sorted(lows)
    # a shift above lambda_min is caught by negative curvature (the upper end then drops to it)
    assert all(r[0] > lam[0] for r in br.rounds if r[3])
    # the Rayleigh quotients of the inverse-iteration vectors bound lambda_min from above exactly
    assert all(r[4] >= lam[0] * (1 - 1e-10) for r in br.rounds if not r[3])


def test_cg_reports_negative_curvature_of_an_indefinite_matrix():
    from gridfield.gtk import conjugate_gradient

    a = np.diag([3.0, 2.0, 1.0, -0.5])
    b = np.ones(4)
    *_, negative = conjugate_gradient(lambda v: a @ v, b, tol=1e-12, return_curvature=True)
    assert negative
    *_, negative = conjugate_gradient(lambda v: np.abs(a) @ v, b, tol=1e-12, return_curvature=True)
    assert not negative
