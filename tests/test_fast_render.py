"""Fast NeRF rendering paths (C++ ``gridfield.fast.render``) against the plain-PyTorch references.

Marching must give the same samples bit for bit (same occupancy grid, step and random numbers).
Volume-rendering weights: float32, forward within rtol 1e-5 / atol 1e-6 (the reference sums optical
depths with one global float64 cumulative sum, the kernel per ray in float64), gradients wrt sigmas
through random cotangents on w, T and alpha within rtol 1e-4 / atol 1e-5. End to end (a small radiance
field, one training step, backend forced both ways): the same loss within rtol 1e-5 and parameter
gradients within atol 1e-5 of the gradient scale.
"""

import pytest
import torch

from conftest import fast_path_missing
from gridfield.fast import FastPathUnavailable
from gridfield.render.marching import march_rays, ray_bounds
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.pipeline import RenderSettings, render_rays, render_rays_eval
from gridfield.render.spaces import warp_distance
from gridfield.render.volrend import render_weight_from_density


@pytest.fixture(scope="module")
def fast_mod():
    from gridfield.fast import render

    mod = render.module("auto", torch.zeros(1))
    if mod is None:
        fast_path_missing("the C++ render extension cannot be built here (see the warning)")
    return mod


def _rays(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 4.0])
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.4 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    d[: n // 8] = -d[: n // 8]  # some rays point away: no samples at all
    return o, d


def _occ(res=16, frac=0.3, seed=0):
    occ = OccupancyGrid(torch.tensor([-1.0, -1.2, -0.9, 1.1, 1.0, 1.3]), resolution=res)
    g = torch.Generator().manual_seed(seed)
    occ.binary.copy_(torch.rand(res, res, res, generator=g) < frac)
    return occ


def _march_both(*args, **kw):
    torch.manual_seed(7)
    ref = march_rays(*args, backend="reference", **kw)
    torch.manual_seed(7)
    fast = march_rays(*args, backend="fast", **kw)
    return ref, fast


@pytest.mark.parametrize("stratified", [False, True])
@pytest.mark.parametrize("with_occ", [False, True])
def test_march_same_samples(fast_mod, stratified, with_occ):
    o, d = _rays(300)
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    ref, fast = _march_both(o, d, 2.0, 6.0, 0.013, aabb, _occ() if with_occ else None, stratified=stratified)
    assert ref[0].numel() > 100
    for a, b in zip(ref, fast):
        assert a.dtype == b.dtype and torch.equal(a, b)
    counts = torch.bincount(fast[0], minlength=300)
    assert (counts[: 300 // 8] == 0).all()  # rays pointing away from the box


def test_march_bounds_and_max_steps(fast_mod):
    o, d = _rays(200, seed=1)
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    t0 = torch.rand(200) + 2.5
    t1 = t0 + torch.rand(200) * 0.8
    t1[5] = t0[5] - 0.1  # an empty interval
    ref, fast = _march_both(o, d, 0.0, 0.0, 0.01, aabb, _occ(32, 0.5), t_start=t0, t_stop=t1, max_steps=40)
    for a, b in zip(ref, fast):
        assert torch.equal(a, b)
    assert (torch.bincount(fast[0], minlength=200) <= 40).all()


@pytest.mark.parametrize("contraction", ["none", "l2"])
def test_march_max_samples_keeps_each_rays_first_samples(fast_mod, contraction):
    """max_samples: the first k samples of each ray of the unlimited march, and the steps considered up to the
    k-th (all of the ray's steps when it has fewer), on both backends."""
    o, d = _rays(300, seed=2)
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    occ = _occ(24, 0.5)
    if contraction != "none":
        occ = OccupancyGrid(torch.tensor([-2.0] * 3 + [2.0] * 3), resolution=24)
        occ.binary.copy_(torch.rand(24, 24, 24, generator=torch.Generator().manual_seed(5)) < 0.5)
    kw = dict(contraction=contraction, radius=1.0)
    far = 6.0 if contraction == "none" else 50.0
    full = march_rays(o, d, 2.0, far, 0.02, aabb, occ, backend="reference", **kw)
    t_lo, t_hi = ray_bounds(o, d, 2.0, far, aabb, contraction, 1.0)
    for k in (1, 3):
        ref, fast = _march_both(o, d, 2.0, far, 0.02, aabb, occ, max_samples=k, **kw)
        assert len(ref) == 4
        for a, b in zip(ref, fast):
            assert a.dtype == b.dtype and torch.equal(a, b)
        ri, t0, _, steps = ref
        for r in range(300):
            mine, want = t0[ri == r], full[1][full[0] == r][:k]
            torch.testing.assert_close(mine, want, rtol=0, atol=0)
            n_inside = int(torch.ceil((t_hi[r] - t_lo[r]) / 0.02 - 0.5).clamp_min(0))  # steps with mid < t_hi
            if mine.numel() < k:
                assert int(steps[r]) in (n_inside, n_inside + 1)  # rounding of the last midpoint
            else:  # up to and including the step of the k-th sample
                u_k = mine[-1] if contraction == "none" else warp_distance(mine[-1:], 1.0)[0]
                assert int(steps[r]) == int(torch.round((u_k - t_lo[r]) / 0.02)) + 1


@pytest.mark.parametrize("kind", ["l2", "linf"])
@pytest.mark.parametrize("stratified", [False, True])
def test_march_contracted_same_samples(fast_mod, kind, stratified):
    """Contracted space: the kernel's samples are the reference's, up to points within a rounding of a
    cell face (the Euclidean norm sums in another order); the intervals of shared samples agree exactly."""
    g = torch.Generator().manual_seed(3)
    n = 400
    o = torch.randn(n, 3, generator=g) * 0.4
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    occ = OccupancyGrid(torch.tensor([-2.0, -2.0, -2.0, 2.0, 2.0, 2.0]), resolution=24)
    occ.binary.copy_(torch.rand(24, 24, 24, generator=g) < 0.4)
    ref, fast = _march_both(o, d, 0.05, 1000.0, 2 / 80, occ.aabb, occ, stratified=stratified, contraction=kind,
                            radius=1.3)
    assert ref[0].numel() > 5000
    key = lambda r: set(zip(r[0].tolist(), r[1].tolist(), r[2].tolist()))
    a, b = key(ref), key(fast)
    assert len(a ^ b) <= 1e-3 * len(a), f"{len(a ^ b)} of {len(a)} samples differ"
    assert (fast[0][1:] >= fast[0][:-1]).all()
    ri, t0, t1 = fast
    same_ray = ri[1:] == ri[:-1]
    u0, u1 = warp_distance(t0, 1.3), warp_distance(t1, 1.3)  # far out, one rounding of u moves t a lot
    assert (u0[1:][same_ray] >= u1[:-1][same_ray] - 1e-6).all()  # front to back, disjoint up to rounding
    assert (t1 > t0).all()


def test_march_contracted_without_occupancy_tiles_the_warped_ray(fast_mod):
    o, d = _rays(50, seed=4)
    ref, fast = _march_both(o, d, 0.1, 500.0, 0.05, torch.tensor([-2.0] * 3 + [2.0] * 3), None, contraction="l2")
    for a, b in zip(ref, fast):
        assert torch.equal(a, b)


def test_march_no_live_ray(fast_mod):
    o, d = _rays(10)
    far_box = torch.tensor([50.0, 50.0, 50.0, 51.0, 51.0, 51.0])
    ri, t0, t1 = march_rays(o, d, 2.0, 6.0, 0.01, far_box, backend="fast")
    assert ri.numel() == t0.numel() == t1.numel() == 0 and ri.dtype == torch.long


def _packed(n_rays=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 30, (n_rays,), generator=g)
    counts[3] = 0  # rays with zero samples, and one with a single sample
    counts[4] = 1
    ray_idx = torch.repeat_interleave(torch.arange(n_rays), counts)
    m = ray_idx.numel()
    t0 = torch.rand(m, generator=g) * 4 + 2
    dt = torch.rand(m, generator=g) * 0.05 + 0.001
    sig = (torch.randn(m, generator=g) * 30).exp().clamp(max=500) * (torch.rand(m, generator=g) > 0.2)
    return ray_idx, t0, t0 + dt, sig


def _weights_and_grads(backend, t0, t1, sig, ray_idx, cot):
    s = sig.clone().requires_grad_(True)
    outs = render_weight_from_density(t0, t1, s, ray_idx, backend=backend)
    loss = sum((o * c).sum() for o, c in zip(outs, cot))
    (g,) = torch.autograd.grad(loss, s)
    return [o.detach() for o in outs], g


@pytest.mark.parametrize("padded", [False, True])
def test_weights_forward_and_grads(fast_mod, padded):
    if padded:
        g = torch.Generator().manual_seed(3)
        t0 = torch.sort(torch.rand(20, 33, generator=g) * 4 + 2, dim=-1).values
        t1 = t0 + 0.02
        sig = torch.rand(20, 33, generator=g) * 60
        ray_idx = None
    else:
        ray_idx, t0, t1, sig = _packed()
    gen = torch.Generator().manual_seed(5)
    cot = [torch.randn(sig.shape, generator=gen) for _ in range(3)]
    (w_r, T_r, a_r), g_r = _weights_and_grads("reference", t0, t1, sig, ray_idx, cot)
    (w_f, T_f, a_f), g_f = _weights_and_grads("fast", t0, t1, sig, ray_idx, cot)
    for a, b in ((w_r, w_f), (T_r, T_f), (a_r, a_f)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    scale = g_r.abs().max()
    torch.testing.assert_close(g_f, g_r, rtol=1e-4, atol=1e-5 * float(scale))
    # only w's cotangent (what training uses)
    cot_w = [cot[0], torch.zeros_like(cot[1]), torch.zeros_like(cot[2])]
    _, g_r = _weights_and_grads("reference", t0, t1, sig, ray_idx, cot_w)
    _, g_f = _weights_and_grads("fast", t0, t1, sig, ray_idx, cot_w)
    torch.testing.assert_close(g_f, g_r, rtol=1e-4, atol=1e-5 * float(g_r.abs().max()))


def test_weights_gradcheck_double_reference_agrees(fast_mod):
    """The hand-written backward against finite differences of the float64 reference."""
    ray_idx, t0, t1, sig = _packed(6, seed=2)
    gen = torch.Generator().manual_seed(1)
    cot = torch.randn(sig.shape, generator=gen)
    s = sig.clone().requires_grad_(True)
    (g_f,) = torch.autograd.grad((render_weight_from_density(t0, t1, s, ray_idx, backend="fast")[0] * cot).sum(), s)
    s64 = sig.double().requires_grad_(True)
    w64 = render_weight_from_density(t0.double(), t1.double(), s64, ray_idx, backend="reference")[0]
    (g_r,) = torch.autograd.grad((w64 * cot.double()).sum(), s64)
    torch.testing.assert_close(g_f.double(), g_r, rtol=1e-4, atol=1e-6 * float(g_r.abs().max()))


def test_auto_falls_back_and_fast_raises_where_no_kernel(fast_mod):
    ray_idx, t0, t1, sig = _packed(5)
    w = render_weight_from_density(t0.double(), t1.double(), sig.double(), ray_idx, backend="auto")[0]
    assert w.dtype == torch.float64
    with pytest.raises(FastPathUnavailable):
        render_weight_from_density(t0.double(), t1.double(), sig.double(), ray_idx, backend="fast")
    t0g = t0.clone().requires_grad_(True)  # differentiable intervals: the reference
    assert render_weight_from_density(t0g, t1, sig, ray_idx, backend="auto")[0].requires_grad


def _small_field(seed=0):
    from gridfield.fields.radiance import RadianceField
    from gridfield.models import make_grid

    torch.manual_seed(seed)
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    field = RadianceField(make_grid("dense", 3, resolutions=[16], features_per_level=1),
                          make_grid("dense", 3, resolutions=[16], features_per_level=12), aabb,
                          appearance="mlp", alpha_init=1e-2, step=0.02)
    with torch.no_grad():
        field.density_grid.features.normal_(0, 3)
        field.color_grid.features.normal_(0, 1)
    return field, aabb


def _train_step(field, aabb, backend, occ):
    o, d = _rays(256, seed=4)
    target = torch.rand(256, 3, generator=torch.Generator().manual_seed(9))
    field.backend = backend
    s = RenderSettings(step=0.02, backend=backend)
    torch.manual_seed(11)
    out = render_rays(field, o, d, occ, aabb, s, stratified=True)
    loss = (out["rgb"] - target).square().mean()
    field.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in field.named_parameters()}, int(out["n_samples"])


def test_end_to_end_step_same_loss_and_grads(fast_mod):
    field, aabb = _small_field()
    occ = _occ(16, 0.6)
    occ.aabb.copy_(aabb)
    l_r, g_r, n_r = _train_step(field, aabb, "reference", occ)
    l_f, g_f, n_f = _train_step(field, aabb, "fast", occ)
    assert n_r == n_f > 1000
    torch.testing.assert_close(l_f, l_r, rtol=1e-5, atol=0)
    for k in g_r:
        torch.testing.assert_close(g_f[k], g_r[k], rtol=1e-4, atol=1e-5 * float(g_r[k].abs().max()), msg=k)


def test_eval_render_same_image(fast_mod):
    field, aabb = _small_field(1)
    occ = _occ(16, 0.6)
    occ.aabb.copy_(aabb)
    o, d = _rays(300, seed=6)
    out = {}
    for b in ("reference", "fast"):
        field.backend = b
        out[b] = render_rays_eval(field, o, d, occ, aabb, RenderSettings(step=0.02, backend=b))
    assert int(out["fast"]["n_samples"]) == int(out["reference"]["n_samples"])
    for k in ("rgb", "opacity", "depth"):
        torch.testing.assert_close(out["fast"][k], out["reference"][k], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_uses_the_reference():
    o, d = (t.cuda() for t in _rays(64))
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], device="cuda")
    ri, _, _ = march_rays(o, d, 2.0, 6.0, 0.02, aabb, backend="auto")
    assert ri.is_cuda
    with pytest.raises(FastPathUnavailable):
        march_rays(o, d, 2.0, 6.0, 0.02, aabb, backend="fast")


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_chunked_mlp_matches_the_head(kernel, threads, monkeypatch):
    """The colour MLP in cache-sized chunks (the C++ chunk loop, or the plain-PyTorch loop when the
    extension is missing) against the head itself: float32, rtol 1e-5 on values, gradients within 1e-5
    of their scale; several chunks and a ragged last one."""
    from gridfield.fast import render
    from gridfield.fields.decoders import MLPDecoder
    from gridfield.fields.radiance import chunked_mlp, chunked_mlp_applies

    if kernel and render.module("auto", torch.zeros(1)) is None:
        fast_path_missing("the C++ render extension cannot be built here")
    if not kernel:
        monkeypatch.setattr(render, "module", lambda *a, **k: None)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    request_restore = old

    torch.manual_seed(0)
    head = MLPDecoder(12 + 9, 3, width=64, hidden_layers=2)
    feat = torch.randn(1000, 12, requires_grad=True)
    view = torch.randn(1000, 9)
    cot = torch.randn(1000, 3)
    assert chunked_mlp_applies(head, feat, view) and not chunked_mlp_applies(head, feat.double(), view.double())
    params = [feat, *head.parameters()]
    ref = head(torch.cat([feat, view], -1))
    g_ref = torch.autograd.grad((ref * cot).sum(), params)
    try:
        out = chunked_mlp(head, feat, view, chunk=300)
        g_out = torch.autograd.grad((out * cot).sum(), params)
        with torch.no_grad():  # inference: the output alone, hidden activations per chunk
            inference = chunked_mlp(head, feat, view, chunk=300)
            density = MLPDecoder(21, 16, width=64, hidden_layers=1)  # the density head: no extra columns
            d_ref = density(torch.cat([feat, view], -1))
            d_out = chunked_mlp(density, torch.cat([feat, view], -1), view[:, :0], chunk=300)
        density12 = MLPDecoder(12, 16, width=64, hidden_layers=1)  # a grad-requiring input, no extra columns
        dg_out = torch.autograd.grad(chunked_mlp(density12, feat, view[:, :0], chunk=300).square().sum(), feat)[0]
    finally:
        torch.set_num_threads(request_restore)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert inference.grad_fn is None
    torch.testing.assert_close(inference, ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_out, d_ref, rtol=1e-5, atol=1e-6)
    dg_ref = torch.autograd.grad(density12(feat).square().sum(), feat)[0]
    torch.testing.assert_close(dg_out, dg_ref, rtol=1e-5, atol=1e-5 * float(dg_ref.abs().max()))
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_field_grids_use_the_fused_grid_kernel(fast_mod, monkeypatch):
    """The radiance field evaluates its dense grids through their own forward: the fused grid kernel
    (:mod:`gridfield.fast.grid_encode`, tested against the reference in test_fast_grids.py) under
    ``field.backend = "fast"``, the plain-PyTorch reference under ``"reference"``, and the choice survives
    a coarse-to-fine refit. Values agree within float32 rounding (rtol 1e-5, atol 1e-6)."""
    from gridfield.fast import grid_encode as fe
    from gridfield.fields.radiance import refit_dense

    calls = []
    real = fe.grid_encode
    monkeypatch.setattr(fe, "grid_encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    field, aabb = _small_field()
    x = torch.rand(500, 3) * 2 - 1
    field.backend = "reference"
    ref = field.density(x)
    assert not calls
    field.backend = "fast"
    torch.testing.assert_close(field.density(x), ref, rtol=1e-5, atol=1e-6)
    assert calls
    for backend in ("reference", "fast"):
        field.backend = backend
        refit_dense(field, aabb * 0.9, 12)
        assert field.density_grid.backend == field.color_grid.backend == backend


def test_env_switch_forces_every_reference(fast_mod, monkeypatch):
    """``GRIDFIELD_FAST=0`` makes ``backend="auto"`` use the plain-PyTorch references everywhere."""
    from gridfield.fast import grid_encode as fe
    from gridfield.fast import render as fast
    from gridfield.fields import radiance

    def boom(*a, **k):
        raise AssertionError("a fast path ran")

    monkeypatch.setenv("GRIDFIELD_FAST", "0")
    for name in ("march", "weights_from_density"):
        monkeypatch.setattr(fast, name, boom)
    monkeypatch.setattr(fe, "grid_encode", boom)
    monkeypatch.setattr(radiance, "chunked_mlp", boom)
    field, aabb = _small_field()
    field.backend = "auto"
    o, d = _rays(64)
    out = render_rays(field, o, d, None, aabb, RenderSettings(step=0.05, backend="auto"))
    out["rgb"].sum().backward()
