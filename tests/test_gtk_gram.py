"""The matrix-free GTK product J (J^T v) in ELL layout: C++ kernel == plain PyTorch == SciPy CSR."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from _gtk_models import one_torch_thread  # noqa: F401 (autouse fixture)
from conftest import fast_path_missing
from gridfield.data.images import pixel_coords
from gridfield.fast import FastPathUnavailable
from gridfield.fast.gram import GramProduct, ell_from_csr, gram_matvec_reference
from gridfield.gtk import bound, gtk
from gridfield.gtk.operator import GTKOperator
from gridfield.models import build_field


def ragged(n=400, cols=150, seed=0) -> sp.csr_matrix:
    """CSR rows of 0 to 9 entries (empty rows included), with repeated columns inside rows."""
    rng = np.random.default_rng(seed)
    widths = rng.integers(0, 10, n)
    widths[:3] = 0
    indptr = np.concatenate([[0], np.cumsum(widths)])
    indices = rng.integers(0, cols, indptr[-1]).astype(np.int32)
    return sp.csr_matrix((rng.standard_normal(indptr[-1]), indices, indptr), shape=(n, cols))


def fast_gram(cols, vals, n_cols, threads):
    torch.set_num_threads(threads)
    try:
        return GramProduct(cols, vals, n_cols, backend="fast")
    except FastPathUnavailable as err:
        fast_path_missing(str(err))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("c", [1, 4])
def test_gram_product_equals_scipy(threads, c):
    jac = ragged()
    cols, vals = ell_from_csr(jac)
    assert cols.shape == (400, int(np.diff(jac.indptr).max())) and cols.dtype == torch.int32
    v = np.random.default_rng(1).standard_normal((400, c))
    expected = jac @ (jac.T @ v)  # SciPy sums the repeated columns as the ELL rows do
    got = fast_gram(cols, vals, jac.shape[1], threads)(torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    ref = gram_matvec_reference(cols, vals, torch.from_numpy(v), jac.shape[1]).numpy()
    np.testing.assert_allclose(ref, expected, rtol=1e-12, atol=1e-12)


def test_ell_is_a_view_for_uniform_rows_and_bad_columns_are_refused():
    jac = sp.csr_matrix((np.arange(12.0), np.array([0, 1, 2] * 4, np.int32), np.arange(0, 13, 3)), shape=(4, 5))
    cols, vals = ell_from_csr(jac)
    assert np.shares_memory(vals.numpy(), jac.data) and cols.shape == (4, 3)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        GramProduct(cols, vals, 2, backend="reference")


def test_operator_fast_and_scipy_backends_agree_on_a_hash_gtk():
    torch.manual_seed(0)
    field = build_field("hash", 2, 3, "linear", n_levels=6, log2_hashmap_size=9, base_resolution=4,
                        per_level_scale=1.6).double()
    x = pixel_coords(30, 26).double()
    op = gtk(field, x, implementation="operator")
    fast = op.matrix
    if fast.gram is None:
        fast_path_missing("gridfield_gram could not be built")
    plain = GTKOperator(fast.jac, fast.out_dim, backend="reference")
    assert plain.gram is None
    v = np.random.default_rng(2).standard_normal((x.shape[0], 3))
    np.testing.assert_allclose(fast.matmat(v), plain.matmat(v), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(fast.matvec(v[:, 0]), op.dense() @ v[:, 0], rtol=1e-10, atol=1e-12)


def test_float32_preconditioner_gives_the_float64_bound():
    """M^-1 applied in float32 only steers PCG: the bound (true float64 residual) is the same."""
    from gridfield.gtk.precond import lattice_preconditioner

    torch.manual_seed(0)
    field = build_field("hash", 2, 1, "linear", n_levels=8, log2_hashmap_size=12, base_resolution=4,
                        per_level_scale=1.5).double()
    x = pixel_coords(48, 48).double()
    y = np.random.default_rng(3).random(x.shape[0])
    op = gtk(field, x, implementation="operator")
    p64 = lattice_preconditioner(field, x, op.matrix.jac, 1, torch.float64)
    p32 = lattice_preconditioner(field, x, op.matrix.jac, 1, torch.float32)
    assert op.preconditioner.apply_dtype == torch.float64  # small lattices: float64 by default
    b64 = bound(op, y, method="cg", tol=1e-8, maxiter=2000, preconditioner=p64)
    b32 = bound(op, y, method="cg", tol=1e-8, maxiter=2000, preconditioner=p32)
    assert b32.relative_residual <= 1e-8 and b64.relative_residual <= 1e-8
    assert b32.value == pytest.approx(b64.value, rel=1e-9)
    assert abs(b32.iterations - b64.iterations) <= max(3, b64.iterations // 10)


@pytest.mark.parametrize("square", [True, False])
def test_sparse_gram_equals_scipy(square):
    from gridfield.fast.gram import sparse_gram

    j1 = ragged(300, 90, seed=4)
    j2 = j1 if square else ragged(170, 90, seed=5)
    torch.set_num_threads(2)
    try:
        k = sparse_gram(j1, j2, backend="fast", sort=True)
    except FastPathUnavailable as err:
        fast_path_missing(str(err))
    ref = (j1 @ j2.T).toarray()
    assert k.shape == ref.shape and k.has_sorted_indices
    k.check_format(full_check=True)
    assert all(np.all(np.diff(k.indices[a:b]) > 0) for a, b in zip(k.indptr[:-1], k.indptr[1:]))
    unsorted = sparse_gram(j1, j2, backend="fast")
    np.testing.assert_allclose(unsorted.toarray(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(k.toarray(), ref, rtol=1e-12, atol=1e-12)
    k2 = k.copy()
    k2.sum_duplicates()
    assert k2.nnz == k.nnz  # unique indices per row
    plain = sparse_gram(j1, j2, backend="reference")
    np.testing.assert_allclose(plain.toarray(), ref, rtol=1e-12, atol=1e-12)
