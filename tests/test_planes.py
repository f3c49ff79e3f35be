"""PlaneGrid (tri-plane sum, K-Planes product, 2D line factors) against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gridfield.grids.base import interpolate
from gridfield.grids.planes import PlaneGrid
from gridfield.models import count_parameters, make_grid

CASES = [(d, a) for d in (2, 3) for a in ("sum", "product")]
INIT = {"sum": (-1.0, 1.0), "product": (0.5, 1.5)}


def make(dim, agg, res=(3, 5, 8), f=3, backend="auto", seed=0):
    torch.manual_seed(seed)
    return PlaneGrid(dim, list(res), f, aggregate=agg, init=INIT[agg], backend=backend).double()


def points(n, dim, seed=1, inside=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64) * (1.8 if inside else 2.6) - (0.9 if inside else 1.3)
    if not inside:  # borders, nodes, the last cell
        x[:4] = torch.tensor([-1.0, 1.0, 0.0, 1.0 - 1e-12], dtype=torch.float64).unsqueeze(1)
    return x


def explicit_factor(grid, level, p, x):
    """Direct (bi)linear interpolation of one factor from its documented rows: ``[N, F]``."""
    r, axes = grid.resolutions[level], grid.axes[p]
    start = grid.offsets[level][p]
    rows = grid.features[start : start + r ** len(axes)]
    u = ((x[:, list(axes)] + 1) / 2 * (r - 1)).clamp(0, r - 1)
    i0 = u.floor().clamp(max=r - 2).long()
    t = u - i0
    if len(axes) == 1:  # line factor: row i
        return (1 - t) * rows[i0[:, 0]] + t * rows[i0[:, 0] + 1]
    ia, ib, ta, tb = i0[:, 0], i0[:, 1], t[:, :1], t[:, 1:]
    at = lambda a, b: rows[a + b * r]  # noqa: E731  row of node (i_a, i_b)
    return ((1 - ta) * (1 - tb) * at(ia, ib) + ta * (1 - tb) * at(ia + 1, ib)
            + (1 - ta) * tb * at(ia, ib + 1) + ta * tb * at(ia + 1, ib + 1))


@pytest.mark.parametrize("dim,agg", CASES)
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_planes_match_explicit_interpolation(dim, agg, backend):
    grid = make(dim, agg, backend=backend)
    x = points(400, dim)
    out = grid(x)
    assert out.shape == (400, 9)
    for level in range(3):
        vals = [explicit_factor(grid, level, p, x) for p in range(dim)]
        ref = sum(vals) if agg == "sum" else torch.stack(vals).prod(0)
        torch.testing.assert_close(out[:, 3 * level : 3 * level + 3], ref, rtol=1e-12, atol=1e-12)


def test_plane_tables_match_grid_sample_per_plane():
    grid = make(3, "sum")
    x = points(300, 3)
    for level in range(3):
        for p, (a, b) in enumerate(grid.axes):
            g = x[:, [a, b]].view(1, 1, -1, 2)
            gs = F.grid_sample(grid.plane_table(level, p), g, align_corners=True, padding_mode="border")
            torch.testing.assert_close(gs[0, :, 0].T, explicit_factor(grid, level, p, x), rtol=1e-12, atol=1e-12)
    assert grid.plane_names == ("xy", "xz", "yz") and grid.axes == [(0, 1), (0, 2), (1, 2)]


@pytest.mark.parametrize("dim", [2, 3])
def test_sum_support_reproduces_forward(dim):
    grid = make(dim, "sum")
    x = points(200, dim)
    terms = grid.support(x)
    assert len(terms) == 3 * dim
    out = torch.zeros(200, grid.out_dim, dtype=torch.float64)
    for t in terms:
        assert t.index.shape == t.weight.shape == (200, 2 ** (dim - 1)) and t.scale is None
        assert (t.weight >= 0).all() and t.index.max() < grid.features.shape[0]
        torch.testing.assert_close(t.weight.sum(1), torch.ones(200, dtype=torch.float64))
        out[:, t.channels] += interpolate(grid.features, t.index, t.weight)
    torch.testing.assert_close(out, grid(x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dim", [2, 3])
def test_product_scale_times_weight_is_the_jacobian(dim):
    grid = make(dim, "product", res=(3, 4), f=2)
    x = points(6, dim)
    w0 = grid.features.detach().clone()
    call = lambda w: torch.func.functional_call(grid, {"features": w}, (x,))  # noqa: E731
    jac = torch.func.jacrev(call)(w0)  # [N, C, rows, F]
    sparse = torch.zeros_like(jac)
    n = torch.arange(6).unsqueeze(1)
    for t in grid.support(x):
        assert t.scale.shape == (6, 2)
        torch.testing.assert_close(t.weight.sum(1), torch.ones(6, dtype=torch.float64))
        for j in range(2):
            sparse[n, t.channels.start + j, t.index, j] += t.scale[:, j : j + 1] * t.weight
    torch.testing.assert_close(sparse, jac, rtol=1e-12, atol=1e-12)
    assert not grid.linear_in_features and make(dim, "sum").linear_in_features


@pytest.mark.parametrize("dim,agg", CASES)
def test_grid_sample_path_matches_reference_gradients(dim, agg):
    fast, ref = make(dim, agg), make(dim, agg, backend="reference")
    x = points(300, dim, inside=True)
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    of, orf = fast(xf), ref(xr)
    torch.testing.assert_close(of, orf, rtol=1e-12, atol=1e-12)
    v = torch.randn_like(of)
    gf = torch.autograd.grad((of * v).sum(), [xf, fast.features], create_graph=True)
    gr = torch.autograd.grad((orf * v).sum(), [xr, ref.features], create_graph=True)
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    # double backward through x, as an eikonal loss needs
    hf = torch.autograd.grad(gf[0].pow(2).sum(), [xf, fast.features])
    hr = torch.autograd.grad(gr[0].pow(2).sum(), [xr, ref.features])
    for a, b in zip(hf, hr):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dim,agg", CASES)
def test_planes_gradcheck(dim, agg):
    grid = make(dim, agg, res=(3, 5), f=2)
    x = points(8, dim, inside=True).requires_grad_()
    assert torch.autograd.gradcheck(lambda x_: grid(x_), (x,))
    assert torch.autograd.gradgradcheck(lambda x_: grid(x_), (x,))
    w = grid.features.detach().clone().requires_grad_()
    call = lambda w_: torch.func.functional_call(grid, {"features": w_}, (x.detach(),))  # noqa: E731
    assert torch.autograd.gradcheck(call, (w,))


@pytest.mark.parametrize("agg", ["sum", "product"])
def test_line_factors_are_separable(agg):
    """2D line factors: g(a, b) = fx(a) (+ or *) fy(b), so swapping coordinates across two points
    keeps the sum (or product) of the two outputs."""
    grid = make(2, agg, res=(7,), f=4)
    p, q = points(50, 2, seed=3), points(50, 2, seed=4)
    swap1 = torch.stack([p[:, 0], q[:, 1]], 1)
    swap2 = torch.stack([q[:, 0], p[:, 1]], 1)
    op = torch.add if agg == "sum" else torch.mul
    torch.testing.assert_close(op(grid(p), grid(q)), op(grid(swap1), grid(swap2)), rtol=1e-12, atol=1e-12)


def test_layout_parameter_count_and_init():
    for dim, res, f in [(3, [16, 32], 4), (2, [64, 128, 256], 8)]:
        grid = PlaneGrid(dim, res, f)
        assert count_parameters(grid) == dim * sum(r ** (dim - 1) for r in res) * f
        last = grid.offsets[-1][-1] + res[-1] ** (dim - 1)
        assert last == grid.features.shape[0]
    prod = PlaneGrid(3, 8, 4, aggregate="product")
    assert prod.features.min() >= 0.1 and prod.features.max() <= 0.5
    assert PlaneGrid(3, 8, 4).features.abs().max() <= 1e-4
    assert isinstance(make_grid("planes", 3, resolutions=[4]), PlaneGrid)


def test_planes_bad_input():
    with pytest.raises(ValueError, match="dim 2 .* or 3"):
        PlaneGrid(4)
    with pytest.raises(ValueError, match="resolutions >= 2"):
        PlaneGrid(3, [8, 1])
    with pytest.raises(ValueError, match="resolutions >= 2"):
        PlaneGrid(3, [8.5])
    assert PlaneGrid(2, np.array([4, 8]), 2).resolutions == [4, 8]
    with pytest.raises(ValueError, match="'sum' or 'product'"):
        PlaneGrid(3, aggregate="mean")
    with pytest.raises(ValueError, match="backend"):
        PlaneGrid(3, backend="cuda")
    with pytest.raises(ValueError, match="lo < hi"):
        PlaneGrid(3, init=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        PlaneGrid(3, 4)(torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        PlaneGrid(2, 4).support(torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        PlaneGrid(3, 4, backend="reference")(torch.full((2, 3), float("nan")))
