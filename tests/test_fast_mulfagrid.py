"""MulFAGrid fast path (fused C++ kernel, ``gridfield.fast.mulfa``) against the plain-PyTorch reference.

Forward values and the gradients of the features and of every kernel parameter through a random
cotangent, both forms, dense, plane (sum and product) and hash layouts (own and shared kernel networks),
2D and 3D.
Tolerances: float64 ``rtol = 1e-10, atol = 1e-12`` (the kernel evaluates the same equations; sin/cos and
softplus are its own ~1 ulp routines). float32: forward ``rtol = atol = 2e-5`` (features ~N(0, 1));
gradients are compared with the float64 reference: the fast path's float32 error must be at most 3x the
reference's own float32 error plus ``1e-5 * max |grad|`` (some kernel gradients, e.g. the output bias in
the stable form, are sums that cancel, so a plain relative tolerance on them would measure float32
rounding, not the kernel), so ``max |grad|`` is taken over the parameters of the same kernel network.
"""

import pytest
import torch

from conftest import fast_path_missing
from gridfield.fast import FastPathUnavailable, load_extension
from gridfield.fast.mulfa import NAME, SOURCES
from gridfield.grids import MulFAGrid


@pytest.fixture(scope="module", autouse=True)
def ext():
    mod = load_extension(NAME, SOURCES)
    if mod is None:
        fast_path_missing("the MulFAGrid C++ fast path cannot be built here (see the warning)")
    return mod


def make(dim, layout="dense", form="stable", res=(5, 9), dtype=torch.float64, width=8, layers=3,
         aggregate=None, seed=0, **kw):
    torch.manual_seed(seed)
    extra = {} if aggregate is None else {"aggregate": aggregate}
    if layout == "hash":  # dense and hashed levels (2^7 rows), points outside [-1, 1] wrap as in tcnn
        extra |= {"n_levels": 3, "log2_hashmap_size": 7, "base_resolution": 3, "finest_resolution": 20.0}
        res = None
    elif layout == "hash-shared":
        extra |= {"n_levels": 3, "log2_hashmap_size": 7, "base_resolution": 3, "finest_resolution": 20.0,
                  "share_kernel": True}
        layout, res = "hash", None
    g = MulFAGrid(dim, None if res is None else list(res), 3, layout=layout, form=form, frequencies=2,
                  width=width, layers=layers, filter_scale=2.0, **extra, **kw).to(dtype)
    with torch.no_grad():
        g.features.normal_()
    return g


def points(n, dim, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=gen, dtype=dtype) * 2.2 - 1.1  # includes clamped points
    x[:4] = torch.tensor([-1.0, 1.0, 0.0, 1.0], dtype=dtype)[:, None]  # exactly on the border / nodes
    return x


def run(grid, x, ct, backend):
    """Output and the gradients of all trainable parameters (through the cotangent ``ct``)."""
    grid.backend = backend
    grid.zero_grad(set_to_none=True)
    y = grid(x)
    (y * ct).sum().backward()
    return y.detach(), {k: p.grad.clone() for k, p in grid.named_parameters() if p.grad is not None}


CASES = [(2, "dense", None), (3, "dense", None), (2, "planes", "sum"), (3, "planes", "sum"),
         (2, "planes", "product"), (3, "planes", "product"), (2, "hash", None), (3, "hash", None),
         (2, "hash-shared", None)]


@pytest.mark.parametrize("form", ["stable", "paper"])
@pytest.mark.parametrize("dim,layout,aggregate", CASES)
def test_float64_matches_reference(dim, layout, aggregate, form):
    grid = make(dim, layout, form, aggregate=aggregate)
    x = points(257, dim)  # not a multiple of the tile size
    ct = torch.randn(257, grid.out_dim, dtype=torch.float64)
    y_ref, g_ref = run(grid, x, ct, "reference")
    y_fast, g_fast = run(grid, x, ct, "fast")
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-12)
    assert g_fast.keys() == g_ref.keys() and "features" in g_ref and "kernels.0.out.bias" in g_ref
    for k in g_ref:
        torch.testing.assert_close(g_fast[k], g_ref[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("form", ["stable", "paper"])
@pytest.mark.parametrize("dim,layout,aggregate", CASES)
def test_float32_matches_reference(dim, layout, aggregate, form):
    grid = make(dim, layout, form, aggregate=aggregate, dtype=torch.float32, width=16)
    x = points(300, dim, torch.float32)
    ct = torch.randn(300, grid.out_dim)
    y_ref, g_ref = run(grid, x, ct, "reference")
    y_fast, g_fast = run(grid, x, ct, "fast")
    torch.testing.assert_close(y_fast, y_ref, rtol=2e-5, atol=2e-5)
    grid64 = grid.double()
    _, g64 = run(grid64, x.double(), ct.double(), "reference")
    for k in g64:
        err_fast = (g_fast[k].double() - g64[k]).abs().max().item()
        err_ref = (g_ref[k].double() - g64[k]).abs().max().item()
        group = ".".join(k.split(".")[:2]) + "." if k.startswith("kernels.") else k  # kernels.<term>.*
        scale = max(v.abs().max().item() for n, v in g64.items() if n.startswith(group))
        assert err_fast <= 3 * err_ref + 1e-5 * scale, (k, err_fast, err_ref, scale)


@pytest.mark.parametrize("width,layers", [(5, 1), (5, 2), (16, 4)])
def test_shapes_of_the_kernel_network(width, layers):
    """Widths that are not multiples of the blocking, a single filter layer (no hidden matrix)."""
    grid = make(2, width=width, layers=layers)
    x = points(100, 2)
    ct = torch.randn(100, grid.out_dim, dtype=torch.float64)
    (y_ref, g_ref), (y_fast, g_fast) = run(grid, x, ct, "reference"), run(grid, x, ct, "fast")
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-12)
    for k in g_ref:
        torch.testing.assert_close(g_fast[k], g_ref[k], rtol=1e-10, atol=1e-12, msg=k)


def test_frozen_kernel_or_frozen_features():
    grid = make(3)
    x, ct = points(64, 3), torch.randn(64, grid.out_dim, dtype=torch.float64)
    for p in grid.kernels.parameters():
        p.requires_grad_(False)
    (_, g_ref), (_, g_fast) = run(grid, x, ct, "reference"), run(grid, x, ct, "fast")
    assert set(g_fast) == {"features"}
    torch.testing.assert_close(g_fast["features"], g_ref["features"], rtol=1e-10, atol=1e-12)
    for p in grid.kernels.parameters():
        p.requires_grad_(True)
    grid.features.requires_grad_(False)
    (_, g_ref), (_, g_fast) = run(grid, x, ct, "reference"), run(grid, x, ct, "fast")
    assert "features" not in g_fast and g_fast.keys() == g_ref.keys()
    for k in g_ref:
        torch.testing.assert_close(g_fast[k], g_ref[k], rtol=1e-10, atol=1e-12, msg=k)


def test_large_arguments_and_adversarial_kernels():
    """Query encodings beyond the float sincos range (R = 2000) and raw kernels of +-1e30 stay exact/finite."""
    grid = MulFAGrid(2, 2000, 1, frequencies=4, width=8)
    x = points(200, 2, torch.float32)
    with torch.no_grad():
        grid.backend = "reference"
        y_ref = grid(x)
        grid.backend = "fast"
        y_fast = grid(x)
    torch.testing.assert_close(y_fast, y_ref, rtol=2e-5, atol=2e-5)
    for form in ("stable", "paper"):
        grid = make(2, form=form)
        for w, b in [(1e30, 0.0), (-1e30, 0.0), (0.0, 1e30), (1e6, -1e6)]:
            with torch.no_grad():
                grid.kernels[0].out.weight.fill_(w)
                grid.kernels[0].out.bias.fill_(b)
            x = points(50, 2)
            grid.backend = "reference"
            y_ref = grid(x)
            grid.backend = "fast"
            y_fast = grid(x)
            assert torch.isfinite(y_fast).all()
            torch.testing.assert_close(y_fast, y_ref, rtol=1e-9, atol=1e-9)


def test_threads_agree():
    grid = make(2, res=(17,))
    x, ct = points(2000, 2), torch.randn(2000, grid.out_dim, dtype=torch.float64)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, g1 = run(grid, x, ct, "fast")
        torch.set_num_threads(2)
        y2, g2 = run(grid, x, ct, "fast")
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-12, atol=1e-13, msg=k)


def test_backend_choice(monkeypatch):
    import gridfield.fast.mulfa as fm

    grid = make(2)
    x = points(32, 2)
    calls = []
    real = fm.mulfa_forward
    monkeypatch.setattr(fm, "mulfa_forward", lambda *a: calls.append(1) or real(*a))
    grid.backend = "auto"
    grid(x)
    assert calls == [1]  # auto uses the fast path on CPU
    monkeypatch.setenv("GRIDFIELD_FAST", "0")
    grid(x)
    assert calls == [1]  # ... and the reference when GRIDFIELD_FAST=0
    grid.backend = "fast"
    grid(x)
    assert calls == [1, 1]  # forcing "fast" ignores the environment
    monkeypatch.delenv("GRIDFIELD_FAST")
    grid.backend = "reference"
    grid(x)
    assert calls == [1, 1]
    with pytest.raises(ValueError, match="backend"):
        MulFAGrid(2, 5, 2, backend="fastest")


def test_grad_wrt_x_uses_the_reference():
    """Eikonal-style double backward: "auto" falls back to the reference, "fast" refuses clearly."""
    grid = make(3)
    x = points(40, 3).requires_grad_(True)
    grid.backend = "auto"
    (g,) = torch.autograd.grad(grid(x).sum(), x, create_graph=True)
    loss = (g.norm(dim=1) - 1).pow(2).mean()
    loss.backward()
    assert grid.features.grad is not None and torch.isfinite(grid.features.grad).all()
    grid.backend = "fast"
    with pytest.raises(FastPathUnavailable, match="wrt x"):
        grid(x)
    with torch.no_grad():  # no gradient can be taken: the fast path applies
        grid(x)


def test_torch_func_and_dtype_fall_back():
    from torch.func import functional_call, jacrev

    grid = make(2, res=(4,))
    x = points(5, 2)
    params = {k: v.detach() for k, v in grid.named_parameters()}
    jac = jacrev(lambda p: functional_call(grid, p, (x,)))(params)  # "auto": reference under torch.func
    grid.backend = "reference"
    ref = jacrev(lambda p: functional_call(grid, p, (x,)))(params)
    for k in ref:
        torch.testing.assert_close(jac[k], ref[k], rtol=1e-12, atol=1e-12)
    grid.backend = "fast"
    with pytest.raises(FastPathUnavailable, match="dtype"):
        grid(x.float())


def test_nan_points_raise():
    grid = make(2)
    x = points(8, 2)
    x[3, 0] = float("nan")
    grid.backend = "fast"
    with pytest.raises(ValueError, match="NaN"):
        grid(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_falls_back_to_reference():
    grid = make(2).cuda()
    x = points(64, 2).cuda()
    grid.backend = "auto"
    y = grid(x)
    grid.backend = "reference"
    torch.testing.assert_close(y, grid(x))
    grid.backend = "fast"
    with pytest.raises(FastPathUnavailable):
        grid(x)
