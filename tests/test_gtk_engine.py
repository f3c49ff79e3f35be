"""GTK engine: structured and operator against the torch.func reference, for every model and decoder."""

import numpy as np
import pytest
import torch

from _gtk_models import model_names, one_torch_thread, small_field  # noqa: F401 (autouse fixture)
from gridfield.errors import InputError
from gridfield.fields import Field, IdentityDecoder
from gridfield.grids import DenseGrid
from gridfield.gtk import gtk


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("decoder", ["identity", "linear", "mlp"])
@pytest.mark.parametrize("name", model_names())
def test_structured_and_operator_match_reference(name, decoder):
    field = small_field(name, decoder)
    x = torch.rand(24, 2, dtype=torch.float64) * 2 - 1
    x[0] = torch.tensor([-1.0, 1.0])  # a corner of the domain
    for wrt in ("grid", "all"):
        ref = gtk(field, x, wrt=wrt, implementation="reference").dense()
        assert ref.shape == (24, 24) and np.abs(ref).max() > 0
        s = gtk(field, x, wrt=wrt, implementation="structured")
        assert s.implementation == "structured"
        assert rel(s.dense(), ref) < 1e-10, (name, decoder, wrt)
        op = gtk(field, x, wrt=wrt, implementation="operator")
        v = np.random.default_rng(0).normal(size=(24, 3))
        assert rel(op.matrix @ v, ref @ v) < 1e-10
        assert rel(op.matrix.matvec(v[:, 0]), ref @ v[:, 0]) < 1e-10
        assert rel(op.diagonal(), np.diag(ref)) < 1e-10


def test_all_adds_decoder_kernel_and_cross_kernel():
    field = small_field("dense", "mlp")
    x1 = torch.rand(10, 2, dtype=torch.float64) * 2 - 1
    x2 = torch.rand(7, 2, dtype=torch.float64) * 2 - 1
    grid_only = gtk(field, x1, wrt="grid").dense()
    full = gtk(field, x1, wrt="all").dense()
    assert np.linalg.eigvalsh(full - grid_only).min() > -1e-10  # decoder part is PSD and non-zero
    assert np.abs(full - grid_only).max() > 1e-3
    for wrt in ("grid", "all"):
        cross = gtk(field, x1, x2, wrt=wrt, implementation="structured").dense()
        ref = gtk(field, x1, x2, wrt=wrt, implementation="reference").dense()
        assert cross.shape == (10, 7) and rel(cross, ref) < 1e-10


def test_auto_picks_by_size_and_says_so():
    field = small_field("dense", "identity")
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    small = gtk(field, x)
    assert small.implementation == "structured" and "structured" in repr(small)
    big = gtk(field, x, max_bytes=20_000)  # the product does not fit: matrix-free
    assert big.implementation == "operator"
    assert rel(big.dense(), small.dense()) < 1e-12


def test_bare_grid_uses_identity_decoder():
    grid = DenseGrid(1, 6, features_per_level=2).double()
    x = torch.linspace(-1, 1, 9, dtype=torch.float64)[:, None]
    a = gtk(grid, x).dense()
    b = gtk(Field(grid, IdentityDecoder(2, 2)), x, implementation="reference").dense()
    assert rel(a, b) < 1e-12


def test_clear_errors_before_allocation():
    field = small_field("dense", "linear")
    x = torch.rand(8, 2, dtype=torch.float64)
    with pytest.raises(InputError, match=r"outside the domain \[-1, 1\]\^2"):
        gtk(field, x * 3)
    with pytest.raises(InputError, match=r"shape \[N, 2\].*\(8, 3\)"):
        gtk(field, torch.rand(8, 3, dtype=torch.float64))
    with pytest.raises(InputError, match="NaN"):
        gtk(field, torch.full((4, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(InputError, match="wrt must be one of"):
        gtk(field, x, wrt="decoder")
    with pytest.raises(InputError, match="implementation must be one of"):
        gtk(field, x, implementation="fast")
    with pytest.raises(InputError, match="square kernels"):
        gtk(field, x, x, implementation="operator")
    with pytest.raises(InputError, match="dense reference Jacobian.*structured"):
        gtk(field, x, implementation="reference", max_bytes=1000)
    many = torch.rand(40, 2, dtype=torch.float64) * 2 - 1  # Jacobian ~13 kB fits, the kernel ~26 kB not
    with pytest.raises(InputError, match="structured GTK.*operator"):
        gtk(field, many, implementation="structured", max_bytes=20_000)
    with pytest.raises(InputError, match="Field .* or a Grid"):
        gtk(torch.nn.Linear(2, 2), x)


class SharedRowsGrid(DenseGrid):
    """Two terms reading the same table rows into different channels (defeats the row-level factor)."""

    def __init__(self):
        super().__init__(2, 4, features_per_level=2)
        self.out_dim = 4

    def support(self, x):
        (t,) = super().support(x)
        return [t, type(t)(t.index, t.weight * 0.5, slice(2, 4))]


def test_shared_rows_fall_back_to_stacked_jacobian():
    torch.manual_seed(0)
    grid = SharedRowsGrid().double()
    with torch.no_grad():
        grid.features.normal_()
    from gridfield.fields import make_decoder

    field = Field(grid, make_decoder("linear", 4, 3).double())
    x = torch.rand(15, 2, dtype=torch.float64) * 2 - 1
    s = gtk(field, x, implementation="structured")
    assert s.info["jacobian_factor"].startswith("stacked")
    assert rel(s.dense(), gtk(field, x, implementation="reference").dense()) < 1e-10


def test_gridless_reference_ntk_matches_explicit_gradients():
    """Non-grid references (FF-MLP, MFN): gtk(wrt='all') is the empirical NTK <dg(x_i)/dtheta, dg(x_j)/dtheta>."""
    from gridfield.models import build_field

    torch.manual_seed(0)
    model = build_field("ffmlp", 2, 2).double()
    x = torch.rand(6, 2, dtype=torch.float64) * 2 - 1
    g = gtk(model, x, wrt="all").dense()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(6):
        per_out = []
        for o in range(2):
            grads = torch.autograd.grad(model(x[i : i + 1])[0, o], params)
            per_out.append(torch.cat([gr.reshape(-1) for gr in grads]))
        rows.append(torch.stack(per_out))
    jac = torch.stack(rows)  # [n, m, P]
    expected = torch.einsum("imp,jmp->ij", jac, jac) / 2
    np.testing.assert_allclose(g, expected.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(InputError, match="wrt='all'"):
        gtk(model, x, wrt="grid")
