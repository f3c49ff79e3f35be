"""MulFAGrid: both forms against independent computations (direct equations, DenseGrid, finite differences)."""

import math

import numpy as np
import pytest
import torch

from gridfield.grids import DenseGrid, HashGrid, MulFAGrid
from gridfield.grids.base import interpolate
from gridfield.grids.mulfagrid import safe_denominator
from gridfield.grids.planes import PlaneGrid
from gridfield.models import build_field


def small(dim=2, res=(4, 7), form="stable", **kw):
    torch.manual_seed(0)
    kw.setdefault("layout_kwargs", {})
    lk = kw.pop("layout_kwargs")
    return MulFAGrid(dim, list(res), 3, form=form, frequencies=2, width=5, layers=2, **kw, **lk).double()


@pytest.mark.parametrize("dim,layout", [(2, "dense"), (3, "dense"), (3, "planes")])
def test_stable_weights_positive_partition_of_unity(dim, layout):
    grid = small(dim, layout=layout, filter_scale=3.0)
    x = torch.rand(300, dim, dtype=torch.float64) * 2.2 - 1.1  # includes points clamped to the border
    for t, hat in zip(grid.support(x), grid.layout.support(x)):
        assert (t.weight >= 0).all() and ((t.weight > 0) == (hat.weight > 0)).all()
        torch.testing.assert_close(t.weight.sum(1), torch.ones(300, dtype=torch.float64), rtol=0, atol=1e-14)
    # off-cell vertices: a node has hat weight 1 at itself, so its kernel weight is 1 too
    node = torch.tensor([[-1 + 2 * 2 / 6] * dim], dtype=torch.float64)  # node 2 of the R = 7 level
    w = grid.support(node)[1 if layout == "dense" else dim].weight
    assert torch.isclose(w.max(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)


def face_pairs(dim, r, n=50, delta=1e-10):
    """Points just left/right of interior cell faces ``x_0 = node`` of a lattice of ``r`` nodes."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64) * 1.8 - 0.9
    node = torch.randint(1, r - 1, (n,), generator=g).double() * (2 / (r - 1)) - 1
    left, right = x.clone(), x.clone()
    left[:, 0], right[:, 0] = node - delta, node + delta
    return left, right


@pytest.mark.parametrize("dim", [2, 3])
def test_stable_continuous_across_faces_paper_not(dim):
    stable, paper = small(dim, res=(7,), filter_scale=3.0), small(dim, res=(7,), form="paper", filter_scale=3.0)
    with torch.no_grad():
        for g in (stable, paper):
            g.features.normal_()
    left, right = face_pairs(dim, 7)
    gap_stable = (stable(left) - stable(right)).abs().max()
    gap_paper = (paper(left) - paper(right)).abs().max()
    assert gap_stable < 1e-7
    assert gap_paper > 1e-2  # the documented discontinuity of the literal form


@pytest.mark.parametrize("dim,layout", [(2, "dense"), (3, "dense"), (2, "planes"), (3, "planes")])
def test_stable_flat_filters_equal_nlinear(dim, layout):
    """``theta = 0``: the raw kernel still varies with x (random phases, output), but not with the vertex."""
    lk = {"aggregate": "product"} if layout == "planes" else {}
    grid = small(dim, layout=layout, layout_kwargs=lk)
    with torch.no_grad():
        for k in grid.kernels:
            k.filter_freq.zero_()
            k.out.weight.normal_()
    ref = (DenseGrid(dim, [4, 7], 3) if layout == "dense" else PlaneGrid(dim, [4, 7], 3, **lk)).double()
    with torch.no_grad():
        ref.features.copy_(torch.randn_like(ref.features))
        grid.features.copy_(ref.features)
    x = torch.rand(200, dim, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(grid(x), ref(x), rtol=1e-12, atol=1e-12)
    if layout == "planes":  # the product Jacobian factor matches the layout's own
        for a, b in zip(grid.support(x), ref.support(x)):
            torch.testing.assert_close(a.scale, b.scale, rtol=1e-12, atol=1e-12)


def direct_paper(grid: MulFAGrid, x: np.ndarray) -> np.ndarray:
    """The paper's equations evaluated point by point, vertex by vertex, in NumPy (one 2D level)."""
    k = grid.kernels[0]
    p = {n: v.detach().numpy() for n, v in k.named_parameters()}
    feats = grid.features.detach().numpy()
    r = grid.layout.resolutions[0]
    out = np.zeros((len(x), feats.shape[1]))
    for n, pt in enumerate(x):
        u = np.clip((pt + 1) * (r - 1) / 2, 0, r - 1)
        base = np.minimum(np.floor(u), r - 2).astype(int)
        gamma = [math.sin(2**l * math.pi * u[a]) for l in range(k.frequencies) for a in range(2)]
        gamma += [math.cos(2**l * math.pi * u[a]) for l in range(k.frequencies) for a in range(2)]
        raws, rows = [], []
        for c0 in (0, 1):
            for c1 in (0, 1):
                vi = np.array([base[0] + c0, base[1] + c1])
                v_hat = -1 + 2 * vi / (r - 1)
                z = np.array(gamma)
                for j in range(len(k.linears)):
                    omega = p["filter_freq"][j] * (r - 1) / 2
                    lin = p[f"linears.{j}.weight"] @ z + p[f"linears.{j}.bias"]
                    z = lin * np.sin(omega @ v_hat + p["filter_phase"][j])
                raws.append(float(p["out.weight"][0] @ z + p["out.bias"][0]))
                rows.append(vi[0] + vi[1] * r)
        raws = np.array(raws)
        out[n] = (raws / raws.sum()) @ feats[rows]
    return out


def test_paper_form_matches_direct_equations():
    grid = small(2, res=(5,), form="paper", filter_scale=2.0)
    with torch.no_grad():
        grid.features.normal_()
    x = np.random.default_rng(0).uniform(-1.05, 1.05, size=(40, 2))
    with torch.no_grad():
        raw_sum = torch.stack([grid.raw_kernels(torch.from_numpy(x), t.index, 0) for t in
                               grid.layout.support(torch.from_numpy(x))]).sum(-1)
    assert raw_sum.abs().min() > grid.paper_eps  # the clamp is not active: pure equations
    got = grid(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, direct_paper(grid, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["stable", "paper"])
def test_gradcheck_features_and_kernel(form):
    grid = small(2, res=(3, 4), form=form, filter_scale=2.0)
    x = torch.rand(8, 2, dtype=torch.float64) * 1.8 - 0.9
    names = ["features", "kernels.0.filter_freq", "kernels.1.filter_phase", "kernels.0.linears.0.weight",
             "kernels.1.linears.1.weight", "kernels.0.out.weight", "kernels.1.out.bias"]
    params = dict(grid.named_parameters())
    inputs = tuple(params[n].detach().clone().requires_grad_() for n in names)

    def call(*ps):
        return torch.func.functional_call(grid, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(call, inputs, fast_mode=True)


def test_division_safety():
    grid = small(2, res=(5,), filter_scale=2.0)
    x = torch.rand(100, 2, dtype=torch.float64) * 2 - 1
    for w, b in [(1e30, 0.0), (-1e30, 0.0), (0.0, -1e30), (0.0, 1e30), (1e6, -1e6)]:
        with torch.no_grad():
            grid.kernels[0].out.weight.fill_(w)
            grid.kernels[0].out.bias.fill_(b)
        (t,) = grid.support(x)
        assert torch.isfinite(t.weight).all() and (t.weight >= 0).all()
        torch.testing.assert_close(t.weight.sum(1), torch.ones(100, dtype=torch.float64))
    # paper form: a vanishing denominator is clamped to +-paper_eps with its sign kept
    s = torch.tensor([0.0, 1e-9, -1e-9, -0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(safe_denominator(s, 1e-3), torch.tensor([1e-3, 1e-3, -1e-3, -0.5, 2.0],
                                                                         dtype=torch.float64))
    paper = small(2, res=(5,), form="paper")
    with torch.no_grad():
        paper.kernels[0].out.weight.zero_()
        paper.kernels[0].out.bias.fill_(1e-12)  # raw sum 4e-12 << eps
    (t,) = paper.support(x)
    torch.testing.assert_close(t.weight, torch.full_like(t.weight, 1e-12 / paper.paper_eps))
    out = paper(x.requires_grad_())
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_bad_input():
    with pytest.raises(ValueError, match="form"):
        MulFAGrid(2, 8, form="literal")
    with pytest.raises(ValueError, match="cannot wrap a PlaneHashLike"):
        MulFAGrid(2, layout=PlaneHashLike(2, 2, 2, 8))
    with pytest.raises(ValueError, match="not resolutions"):
        MulFAGrid(2, 16, layout="hash")
    with pytest.raises(ValueError, match="layout 'octree'"):
        MulFAGrid(2, layout="octree")
    with pytest.raises(ValueError, match="resolutions >= 2"):
        MulFAGrid(2, [])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        MulFAGrid(2, 8)(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="in_dim 3"):
        MulFAGrid(2, layout=DenseGrid(3, 4))


def test_registry_parameter_split():
    field = build_field("mulfagrid", 2, 3, decoder="linear", resolutions=[8, 16], features_per_level=2)
    assert list(field.grid_parameters()) == ["grid.features"]
    other = field.other_parameters()
    assert any(k.startswith("grid.kernels.0.filter_freq") for k in other) and "decoder.weight" in other
    assert not field.linear_in_grid
    for p in field.grid.kernel_parameters().values():
        p.requires_grad_(False)
    for p in field.decoder.parameters():
        p.requires_grad_(False)
    assert field.linear_in_grid  # kernel and decoder frozen: Theorem 2 exact
    x = torch.rand(5, 2)
    first = field.grid.support(x)[0]
    torch.testing.assert_close(field.grid(x)[:, :2], interpolate(field.grid.features, first.index, first.weight))


def fit_crop(grid, steps=100):
    """Full-batch Adam (features lr 0.05, kernel lr 1e-2) on a 48x48 astronaut crop; returns PSNR (dB)."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()[40:88, 190:238].astype(np.float32) / 255)
    c = (torch.arange(48, dtype=torch.float32) + 0.5) * (2 / 48) - 1
    x = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).reshape(-1, 2)
    y = img.reshape(-1, 3)
    groups = [{"params": [grid.features], "lr": 0.05}]
    if grid.kernel_parameters():
        groups.append({"params": list(grid.kernel_parameters().values()), "lr": 1e-2})
    opt = torch.optim.Adam(groups)
    for _ in range(steps):
        loss = ((grid(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return -10 * math.log10(((grid(x) - y) ** 2).mean().item())


def test_fits_small_image_better_than_bilinear(one_thread):
    """Stable form, 16^2 RGB grid, width 8, 2 layers, 100 steps: measured 27.9 dB vs bilinear 26.7 dB."""
    torch.manual_seed(0)
    dense = fit_crop(DenseGrid(2, 16, 3))
    torch.manual_seed(0)
    mulfa = fit_crop(MulFAGrid(2, 16, 3, width=8, layers=2))
    assert mulfa > 27.3 and mulfa > dense + 0.5, (mulfa, dense)


@pytest.mark.parametrize("layout_kwargs", [{}, {"layout": "planes", "aggregate": "product"}])
def test_support_gives_exact_gtk(layout_kwargs):
    """The GTK assembled from ``support()`` (weights, recomputed product scales) equals jacrev's."""
    from gridfield.gtk.engine import gtk

    torch.manual_seed(0)
    field = build_field("mulfagrid", 2, 2, "linear", resolutions=[5, 8], features_per_level=2,
                        filter_scale=2.0, **layout_kwargs).double()
    x = torch.rand(30, 2, dtype=torch.float64) * 2 - 1
    ref = np.asarray(gtk(field, x, implementation="reference").matrix)
    structured = gtk(field, x, implementation="structured").matrix
    np.testing.assert_allclose(structured.toarray(), ref, rtol=1e-10, atol=1e-14)



class PlaneHashLike(HashGrid):
    """A HashGrid subclass with its own support: MulFAGrid cannot know its lattice, so it refuses it."""

    def support(self, x):
        return super().support(x)


HASH = {"n_levels": 4, "log2_hashmap_size": 8, "base_resolution": 3, "finest_resolution": 40.0}


def hash_pair(dim, **kw):
    """A MulFAGrid on a hash layout (dense and hashed levels) and the HashGrid with the same table."""
    torch.manual_seed(0)
    grid = MulFAGrid(dim, None, 2, layout="hash", frequencies=2, width=6, layers=2, filter_scale=2.0,
                     **HASH, **kw).double()
    ref = HashGrid(dim, features_per_level=2, backend="reference", **HASH).double()
    with torch.no_grad():
        grid.features.normal_()
        ref.features.copy_(grid.features)
    return grid, ref


@pytest.mark.parametrize("dim", [2, 3])
def test_hash_layout_is_hash_grid_with_flat_filters(dim):
    """theta = 0 on every level: the stable kernel reduces to the HashGrid's own n-linear weights."""
    grid, ref = hash_pair(dim)
    assert grid.layout.hashed_levels() and len(grid.layout.hashed_levels()) < 4  # dense and hashed levels
    with torch.no_grad():
        for k in grid.kernels:
            k.filter_freq.zero_()
    x = torch.rand(400, dim, dtype=torch.float64) * 2 - 1
    for backend in ("reference", "fast"):
        grid.backend = backend
        torch.testing.assert_close(grid(x), ref(x), rtol=1e-12, atol=1e-12)


def test_hash_layout_partition_of_unity_and_rows():
    grid, ref = hash_pair(2)
    x = torch.rand(300, 2, dtype=torch.float64) * 2 - 1
    for t, h in zip(grid.support(x), ref.support(x)):
        assert torch.equal(t.index, h.index)
        assert (t.weight >= 0).all() and ((t.weight > 0) == (h.weight > 0)).all()
        torch.testing.assert_close(t.weight.sum(1), torch.ones(300, dtype=torch.float64), rtol=0, atol=1e-14)
    assert not torch.allclose(grid(x), ref(x))  # the learned kernel does change the weights


def test_shared_kernel_equals_tied_copies():
    """share_kernel=True: one network, per-level filters; outputs equal separate networks holding copies of
    it, and the shared tensors' gradients are the sums of the copies' gradients."""
    shared, _ = hash_pair(2, share_kernel=True)
    own, _ = hash_pair(2)
    with torch.no_grad():
        own.features.copy_(shared.features)
        for a, b in zip(own.kernels, shared.kernels):
            for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
                assert na == nb
                pa.copy_(pb)
    n_own = sum(p.numel() for p in own.parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    net = sum(p.numel() for n, p in own.kernels[0].named_parameters() if not n.startswith("filter_"))
    assert n_own - n_shared == 3 * net  # the three other levels' networks are gone, their filters stay
    x = torch.rand(200, 2, dtype=torch.float64) * 2 - 1
    ct = torch.randn(200, shared.out_dim, dtype=torch.float64)
    for backend in ("reference", "fast"):
        shared.backend = own.backend = backend
        shared.zero_grad()
        own.zero_grad()
        ya, yb = shared(x), own(x)
        torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
        (ya * ct).sum().backward()
        (yb * ct).sum().backward()
        w_own = sum(k.linears[0].weight.grad for k in own.kernels)
        torch.testing.assert_close(shared.kernels[0].linears[0].weight.grad, w_own, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(shared.kernels[2].filter_freq.grad, own.kernels[2].filter_freq.grad,
                                   rtol=1e-10, atol=1e-12)


def test_hash_layout_support_gives_exact_gtk():
    from gridfield.gtk.engine import gtk

    torch.manual_seed(0)
    field = build_field("mulfagrid", 2, 2, "linear", layout="hash", features_per_level=2, filter_scale=2.0,
                        share_kernel=True, **HASH).double()
    x = torch.rand(30, 2, dtype=torch.float64) * 2 - 1
    ref = np.asarray(gtk(field, x, implementation="reference").matrix)
    structured = gtk(field, x, implementation="structured").matrix
    np.testing.assert_allclose(structured.toarray(), ref, rtol=1e-10, atol=1e-14)
