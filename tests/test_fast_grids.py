"""Fused C++ grid encoding (gridfield.fast.grid_encode) against the plain-PyTorch HashGrid / DenseGrid.

Forward, gradients wrt the table and the points through a random cotangent, and the double backward of an
eikonal-style loss (grad_x with create_graph=True, through a nonlinear decoder, then grads wrt the table
and the points). Tolerances: float64 rtol 1e-12, atol 1e-12 * max|reference|; float32 rtol 1e-5,
atol 1e-6 * max|reference| (the kernel sums in another order than einsum / index_add, so rounding errors
scale with the largest terms of each sum, not with each entry).
"""

import pytest
import torch

from conftest import fast_path_missing
from gridfield.fast import FastPathUnavailable, load_extension
from gridfield.fast import grid_encode as fe
from gridfield.grids import DenseGrid, HashGrid


@pytest.fixture(scope="module")
def ext():
    mod = load_extension(fe.NAME, fe.SOURCES)
    if mod is None:
        fast_path_missing("the grid_encode C++ extension cannot be built here (see the warning)")
    return mod


TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-6)}


def close(got, ref, dtype):
    rtol, atol = TOL[dtype]
    scale = ref.abs().max().item() if ref.numel() else 1.0
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol * max(scale, 1e-30))


def hash_grid(dim, **kw):
    # mixes dense and hashed levels; per_level_scale 2 makes every level's scale an integer, so the
    # last half cell reads the one-past-the-end vertex (tcnn's border behaviour)
    cfg = {1: {"n_levels": 6, "log2_hashmap_size": 5, "base_resolution": 4, "per_level_scale": 2.0},
           2: {"n_levels": 5, "log2_hashmap_size": 8, "base_resolution": 4, "per_level_scale": 2.0},
           3: {"n_levels": 4, "log2_hashmap_size": 10, "base_resolution": 3, "per_level_scale": 1.7}}[dim]
    cfg.update(kw)
    grid = HashGrid(dim, features_per_level=2, init_scale=1.0, **cfg)
    assert grid.hashed_levels() and len(grid.hashed_levels()) < grid.n_levels
    return grid


def points(dim, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64) * 2.6 - 1.3  # includes points outside [-1, 1]
    special = [[1.0] * dim, [-1.0] * dim, [1 - 1e-7] * dim, [0.999] * dim, [1.0] + [-1.0] * (dim - 1),
               [0.0] * dim, [-1.2] + [1.1] * (dim - 1)]
    return torch.cat([x, torch.tensor(special, dtype=torch.float64)])


def eager(grid):
    return grid.eager_forward if isinstance(grid, HashGrid) else grid.reference_forward


def compare_all(grid, x, dtype):
    """Forward, first and second derivatives of the fused path against the eager path."""
    grid = grid.to(dtype)
    x = x.to(dtype)
    grid.backend = "fast"
    ref_fn = eager(grid)
    close(grid(x), grid.reference_forward(x), dtype)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [grid(xs[0]), ref_fn(xs[1])]
    close(outs[0], outs[1], dtype)
    torch.manual_seed(1)
    v = torch.randn_like(outs[1])
    u = torch.randn_like(x)
    results = []
    for xi, out in zip(xs, outs):
        gx, gw = torch.autograd.grad((out * v).sum(), (xi, grid.features), retain_graph=True)
        # eikonal-style: grad_x through a nonlinear decoder with create_graph, then a loss of it
        (g,) = torch.autograd.grad((torch.tanh(out) * v).sum(), xi, create_graph=True)
        loss = (g.norm(dim=-1) - 1).pow(2).mean() + (g * u).sum() + out.pow(2).mean()
        ggx, ggw = torch.autograd.grad(loss, (xi, grid.features))
        results.append((gx, gw, ggx, ggw))
    for a, b in zip(*results):
        close(a, b, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_hash_fast_matches_eager(ext, dim, dtype):
    torch.manual_seed(dim)
    compare_all(hash_grid(dim), points(dim), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_dense_fast_matches_eager(ext, dim, dtype):
    torch.manual_seed(dim)
    compare_all(DenseGrid(dim, [3, 7, 16], features_per_level=3, init_scale=1.0), points(dim), dtype)


@pytest.mark.parametrize("f", [1, 2, 4])
def test_feature_widths(ext, f):
    torch.manual_seed(f)
    grid = HashGrid(3, n_levels=3, features_per_level=f, log2_hashmap_size=9, base_resolution=3, init_scale=1.0)
    compare_all(grid, points(3, 200), torch.float64)
    compare_all(DenseGrid(2, [5, 9], features_per_level=f, init_scale=1.0), points(2, 200), torch.float32)


def test_hash_border_rows_are_the_eager_ones(ext):
    # the one-past-the-end vertex on the last half cell aliases (dense levels) or hashes, as in eager
    grid = HashGrid(2, n_levels=1, log2_hashmap_size=8, base_resolution=4, init_scale=1.0, backend="fast").double()
    x = torch.tensor([[1.0, -1.0], [0.9, 0.95], [-1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(grid(x), grid.reference_forward(x), rtol=0, atol=1e-15)


def test_gradgradcheck_fast(ext):
    torch.manual_seed(0)
    grid = HashGrid(3, n_levels=3, log2_hashmap_size=6, base_resolution=3, init_scale=1.0, backend="fast").double()
    x = torch.rand(400, 3, dtype=torch.float64) * 1.6 - 0.8
    ok = torch.ones(len(x), dtype=torch.bool)
    for s in grid.scales:  # keep points away from cell faces (finite differences must not cross one)
        ok &= ((torch.frac((x + 1) / 2 * s + 0.5) - 0.5).abs() < 0.45).all(1)
    x = x[ok][:6].clone().requires_grad_()
    assert len(x) == 6
    w = grid.features.detach().clone().requires_grad_()
    spec, mod = grid.encode_spec(), fe.encoder_for("fast", w, x)
    fn = lambda w_, x_: fe.grid_encode(mod, w_, x_, spec)
    assert torch.autograd.gradcheck(fn, (w, x), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (w, x), fast_mode=True)


def test_dense_gradgradcheck_fast(ext):
    torch.manual_seed(0)
    grid = DenseGrid(2, [5, 8], features_per_level=2, init_scale=1.0, backend="fast").double()
    x = torch.tensor([[0.1, -0.3], [0.55, 0.2], [-0.62, 0.71], [1.4, 0.3]], dtype=torch.float64)  # last clamps
    x.requires_grad_()
    w = grid.features.detach().clone().requires_grad_()
    spec, mod = grid.encode_spec(), fe.encoder_for("fast", w, x)
    fn = lambda w_, x_: fe.grid_encode(mod, w_, x_, spec)
    assert torch.autograd.gradcheck(fn, (w, x), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (w, x), fast_mode=True)


@pytest.mark.parametrize("strategy", ["levels", "atomic", "per_thread", "rows"])
def test_scatter_strategies_agree(ext, strategy):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        grid = hash_grid(3).double()
        x = points(3, 3000).requires_grad_()
        spec, mod = grid.encode_spec().with_strategy(strategy), fe.encoder_for("fast", grid.features, x)
        out = fe.grid_encode(mod, grid.features, x, spec)
        v = torch.randn_like(out)
        (g,) = torch.autograd.grad((out * v).sum(), x, create_graph=True)
        got = torch.autograd.grad((out * v).sum() + g.pow(2).sum(), (grid.features, x))
        ref_out = grid.eager_forward(x)
        (g,) = torch.autograd.grad((ref_out * v).sum(), x, create_graph=True)
        ref = torch.autograd.grad((ref_out * v).sum() + g.pow(2).sum(), (grid.features, x))
        for a, b in zip(got, ref):
            close(a, b, torch.float64)
    finally:
        torch.set_num_threads(threads)


def test_backend_choice(ext, monkeypatch):
    monkeypatch.delenv("GRIDFIELD_FAST", raising=False)
    grid = hash_grid(2)
    x = points(2, 50).float()
    assert fe.encoder_for("auto", grid.features, x) is ext
    assert fe.encoder_for("fast", grid.features, x) is ext
    assert fe.encoder_for("reference", grid.features, x) is None
    monkeypatch.setenv("GRIDFIELD_FAST", "0")
    assert fe.encoder_for("auto", grid.features, x) is None
    assert fe.encoder_for("fast", grid.features, x) is ext  # forcing wins over the environment
    monkeypatch.delenv("GRIDFIELD_FAST")
    # a dtype mismatch: auto falls back to eager (which handles it), fast raises
    assert fe.encoder_for("auto", grid.features, x.double()) is None
    with pytest.raises(FastPathUnavailable, match="float32/float64"):
        fe.encoder_for("fast", grid.features, x.double())
    with pytest.raises(ValueError, match="backend must be one of"):
        HashGrid(2, backend="quick")
    with pytest.raises(ValueError, match="backend must be one of"):
        DenseGrid(2, backend="quick")
    for backend in ("reference", "fast", "auto"):
        grid.backend = backend
        out = grid(x)
        assert (out.grad_fn is not None and "Encode" in type(out.grad_fn).__name__) == (backend != "reference")


def test_env_forces_reference(ext, monkeypatch):
    monkeypatch.delenv("GRIDFIELD_FAST", raising=False)
    grid = DenseGrid(2, [4, 6], init_scale=1.0)
    x = points(2, 50).float()
    assert "Encode" in type(grid(x).grad_fn).__name__
    monkeypatch.setenv("GRIDFIELD_FAST", "0")
    assert "Encode" not in type(grid(x).grad_fn).__name__


def test_checkpoint_and_transforms(ext):
    grid = hash_grid(2)
    assert set(grid.state_dict()) == {"features"}  # backend is an attribute, not state
    other = HashGrid(2, n_levels=5, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0,
                     backend="reference")
    other.load_state_dict(grid.state_dict())
    x = points(2, 30).float()
    torch.testing.assert_close(other(x), grid(x), rtol=1e-6, atol=1e-6)
    # torch.func transforms (the GTK reference uses jacrev) trace the reference, even when fast is forced
    grid.backend = "fast"
    call = lambda w: torch.func.functional_call(grid, {"features": w}, (x[:3],))
    jac = torch.func.jacrev(call)(grid.features.detach())
    assert jac.shape == (3, grid.out_dim, *grid.features.shape)


def test_subclass_with_own_support_uses_reference(ext):
    class Shifted(DenseGrid):
        def support(self, x):
            return super().support(x.flip(1))

    grid = Shifted(2, [4, 6], init_scale=1.0)
    x = points(2, 30).float()
    torch.testing.assert_close(grid(x), DenseGrid.reference_forward(grid, x))
    grid.backend = "fast"
    with pytest.raises(FastPathUnavailable, match="redefines support"):
        grid(x)


def test_bad_points_fast(ext):
    grid = HashGrid(2, n_levels=2, log2_hashmap_size=8, backend="fast")
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        grid(torch.zeros(5, 3))
    x = torch.tensor([[0.0, float("nan")], [0.3, -0.2], [float("-inf"), 1e30]])  # NaN in, NaN out, no sync
    out = grid(x)
    assert out[[0, 2]].isnan().all()
    torch.testing.assert_close(out[1], HashGrid.reference_forward(grid, x[1:2])[0])
    with pytest.raises(RuntimeError, match="needs rows"):  # a table that does not match the grid
        fe.grid_encode(ext, grid.features[:10], torch.zeros(3, 2), grid.encode_spec())
    dense = DenseGrid(2, [4], backend="fast")
    out = dense(torch.tensor([[0.0, float("nan")], [0.2, 0.1]]))  # NaN in, NaN out (no bad memory access)
    assert out[0].isnan().all() and out[1].isfinite().all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_falls_back_to_eager():
    grid = hash_grid(2).cuda()
    x = points(2, 50).float().cuda()
    assert fe.encoder_for("auto", grid.features, x) is None
    with pytest.raises(FastPathUnavailable, match="cuda"):
        fe.encoder_for("fast", grid.features, x)
    torch.testing.assert_close(grid(x), grid.reference_forward(x))


def test_unbuildable_extension_falls_back(monkeypatch):
    import gridfield.fast._build as build

    monkeypatch.delenv("GRIDFIELD_FAST", raising=False)
    monkeypatch.setattr(build, "load_extension", lambda name, sources: None)
    grid = hash_grid(2)
    x = points(2, 20).float()
    out = grid(x)  # auto: the eager path
    assert "Encode" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, grid.reference_forward(x))
    grid.backend = "fast"
    with pytest.raises(FastPathUnavailable, match="could not be built"):
        grid(x)


def _single_dense(f=12, r=11, dtype=torch.float32):
    grid = DenseGrid(3, [r], features_per_level=f, init_scale=1.0, backend="fast").to(dtype)
    return grid


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("f", [1, 12, 5])
def test_single_dense_level_row_split(ext, threads, f):
    """One dense 3D level (the radiance field's grids), 6000 points: with 2 threads ``auto`` splits the
    table-gradient scatter by rows (no atomics). Forward, table and point gradients and the eikonal-style
    double backward against the reference, float32 (tolerances of ``TOL``)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(f)
        compare_all(_single_dense(f), points(3, 6000, seed=f), torch.float32)
    finally:
        torch.set_num_threads(old)


def _step(grid, x, v):
    (grid(x) * v).sum().backward()


def test_grad_buffer_never_overwrites_a_held_gradient(ext):
    """The table gradient goes into a reused buffer only when nobody holds it: a ``.grad`` kept from step 1
    is unchanged by step 2, each step's gradient equals the reference's, and once released (``set_to_none``)
    the buffer is reused (same storage)."""
    torch.manual_seed(0)
    grid = _single_dense(3, 8)
    xs = [points(3, 500, seed=s).float() for s in range(4)]
    vs = [torch.randn(len(x), 3) for x in xs]
    refs = []
    for x, v in zip(xs, vs):
        (g,) = torch.autograd.grad((grid.reference_forward(x) * v).sum(), grid.features)
        refs.append(g)
    _step(grid, xs[0], vs[0])
    held = grid.features.grad  # kept by the caller
    held_copy = held.clone()
    grid.features.grad = None
    _step(grid, xs[1], vs[1])
    g1 = grid.features.grad
    assert g1.data_ptr() != held.data_ptr()
    torch.testing.assert_close(held, held_copy, rtol=0, atol=0)
    close(held, refs[0], torch.float32)
    close(g1, refs[1], torch.float32)
    ptrs = {g1.data_ptr(), held.data_ptr()}
    del g1, held
    grid.features.grad = None
    _step(grid, xs[2], vs[2])
    assert grid.features.grad.data_ptr() in ptrs  # a buffer reused once released (set_to_none)
    close(grid.features.grad, refs[2], torch.float32)
    # accumulation (no set_to_none): the new gradient is added to the kept .grad, the buffer is released
    _step(grid, xs[3], vs[3])
    close(grid.features.grad, refs[2] + refs[3], torch.float32)
    # torch.autograd.grad hands the buffer out: the returned gradient is kept, the next one is another tensor
    (a,) = torch.autograd.grad((grid(xs[0]) * vs[0]).sum(), grid.features)
    (b,) = torch.autograd.grad((grid(xs[1]) * vs[1]).sum(), grid.features)
    assert a.data_ptr() != b.data_ptr()
    close(a, refs[0], torch.float32)
    close(b, refs[1], torch.float32)


def test_grad_buffer_same_table_twice_in_one_graph(ext):
    """Two evaluations of one grid in one backward: two table gradients, neither overwrites the other."""
    torch.manual_seed(1)
    grid = _single_dense(2, 6)
    x0, x1 = points(3, 300, seed=1).float(), points(3, 300, seed=2).float()
    v0, v1 = torch.randn(len(x0), 2), torch.randn(len(x1), 2)
    (ref,) = torch.autograd.grad((grid.reference_forward(x0) * v0).sum() + (grid.reference_forward(x1) * v1).sum(),
                                 grid.features)
    for _ in range(3):
        grid.features.grad = None
        ((grid(x0) * v0).sum() + (grid(x1) * v1).sum()).backward()
        close(grid.features.grad, ref, torch.float32)


@pytest.mark.parametrize("kind", ["hash", "dense"])
def test_grad_buffer_with_eikonal_double_backward(ext, kind):
    """SDF-style steps (eikonal loss: grad_x with create_graph, then ``backward``) repeated with
    ``set_to_none``: the reused buffers give the reference's table gradients every step, and a gradient
    kept from the first step is not overwritten by the later ones."""
    torch.manual_seed(2)
    grid = (hash_grid(3) if kind == "hash" else DenseGrid(3, [9], features_per_level=2, init_scale=1.0)).float()
    grid.backend = "fast"
    kept = []
    for s in range(3):
        x = points(3, 300, seed=s).float()
        u = torch.randn(len(x), 3)
        grads = []
        for fn in (grid, grid.reference_forward):
            xi = x.clone().requires_grad_()
            out = fn(xi)
            (g,) = torch.autograd.grad(torch.tanh(out).sum(), xi, create_graph=True)
            loss = (g.norm(dim=-1) - 1).pow(2).mean() + (g * u).sum() + out.pow(2).mean()
            grid.features.grad = None
            loss.backward()
            grads.append(grid.features.grad)
        close(grads[0], grads[1], torch.float32)
        kept.append((grads[0], grads[0].clone()))
    for g, copy in kept:
        torch.testing.assert_close(g, copy, rtol=0, atol=0)
