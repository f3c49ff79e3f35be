"""Volume rendering: hand-computed transmittances and weights; packed vs padded layouts agree in
values and gradients; marching and occupancy against direct computations."""

import torch

from gridfield.render.marching import march_rays
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.volrend import (
    accumulate_along_rays,
    distortion_loss,
    exclusive_sum,
    pack,
    render_transmittance_from_alpha,
    render_weight_from_alpha,
    render_weight_from_density,
)


def test_hand_computed_transmittance_and_weights():
    alphas = torch.tensor([[0.0, 0.3, 0.8, 0.8, 0.5]])
    w, T = render_weight_from_alpha(alphas)
    torch.testing.assert_close(T, torch.tensor([[1.0, 1.0, 0.7, 0.14, 0.028]]))
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.3, 0.56, 0.112, 0.014]]))
    # packed: two rays, [0, 0.3, 0.8, 0.8] and [0.5, 0.5]
    a = torch.tensor([0.0, 0.3, 0.8, 0.8, 0.5, 0.5])
    ri = torch.tensor([0, 0, 0, 0, 1, 1])
    torch.testing.assert_close(render_transmittance_from_alpha(a, ri), torch.tensor([1.0, 1.0, 0.7, 0.14, 1.0, 0.5]))


def test_density_weights_match_direct_loop():
    g = torch.Generator().manual_seed(0)
    sig, dt = torch.rand(3, 7, generator=g) * 5, torch.rand(3, 7, generator=g) * 0.2
    t0 = torch.cumsum(dt, -1) - dt
    w, T, alpha = render_weight_from_density(t0, t0 + dt, sig)
    for r in range(3):  # the textbook product, one sample at a time
        trans = 1.0
        for i in range(7):
            a = 1 - torch.exp(-sig[r, i] * dt[r, i])
            torch.testing.assert_close(T[r, i], torch.as_tensor(trans, dtype=torch.float32), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(w[r, i], trans * a, rtol=1e-5, atol=1e-6)
            trans = trans * (1 - a)
    torch.testing.assert_close(w.sum(-1), 1 - torch.prod(1 - alpha, -1))


def test_packed_equals_padded_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    R, S = 5, 9
    lengths = torch.tensor([9, 0, 3, 6, 1])
    mask = torch.arange(S)[None] < lengths[:, None]
    sig = (torch.rand(R, S, generator=g) * 4).requires_grad_()
    rgb = torch.rand(R, S, 3, generator=g).requires_grad_()
    t0 = torch.arange(S).float().expand(R, S) * 0.1
    def padded():
        w, _, _ = render_weight_from_density(t0, t0 + 0.1, sig * mask)
        return accumulate_along_rays(w, rgb), accumulate_along_rays(w)
    def packed():
        ri, s, c, tt = pack(mask, sig, rgb, t0)
        w, _, _ = render_weight_from_density(tt, tt + 0.1, s, ri)
        return accumulate_along_rays(w, c, ri, R), accumulate_along_rays(w, None, ri, R)
    cot = torch.randn(R, 3, generator=g), torch.randn(R, 1, generator=g)
    outs = []
    for fn in (padded, packed):
        col, op = fn()
        grads = torch.autograd.grad((col * cot[0]).sum() + (op * cot[1]).sum(), (sig, rgb))
        outs.append((col, op, *grads))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert outs[0][1][1].item() == 0.0  # the empty ray has zero opacity


def test_exclusive_sum_packed_long_batch_precision():
    x = torch.full((200_000,), 0.1)
    ri = torch.arange(200_000) // 1000
    ex = exclusive_sum(x, ri).view(200, 1000)
    torch.testing.assert_close(ex, (torch.arange(1000) * 0.1).expand(200, 1000), rtol=1e-5, atol=1e-4)


def test_march_rays_against_direct_sampling_and_occupancy():
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    o = torch.tensor([[-3.0, 0.1, 0.2], [0.3, -3.0, 0.0], [5.0, 5.0, 5.0]])
    d = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])
    ri, t0, t1 = march_rays(o, d, near=0.0, far=10.0, step=0.25, aabb=aabb)
    assert ri.tolist() == [0] * 8 + [1] * 8  # box from t=2 to 4, 8 steps; the third ray misses
    torch.testing.assert_close(t0[:8], 2.0 + 0.25 * torch.arange(8.0))
    torch.testing.assert_close(t1 - t0, torch.full_like(t0, 0.25))
    occ = OccupancyGrid(aabb, resolution=4)
    occ.binary.zero_()
    occ.binary[3, :, :] = True  # x in [0.5, 1]
    ri, t0, _ = march_rays(o, d, 0.0, 10.0, 0.25, aabb, occupancy=occ)
    mid = o[ri] + d[ri] * (t0 + 0.125)[:, None]
    assert ri.tolist() == [0, 0] and (mid[:, 0] > 0.5).all()


def test_occupancy_update_marks_dense_region():
    occ = OccupancyGrid(torch.tensor([-1.0, -1, -1, 1, 1, 1]), resolution=8)
    occ.update(lambda x: 100.0 * (x.norm(dim=-1) < 0.5).float(), step_size=0.01, warmup=True)
    centres = occ.cell_centers(jitter=False)
    expect = centres.norm(dim=-1) < 0.35  # cells well inside the ball are surely hit
    assert occ.binary.reshape(-1)[expect].all()
    assert not occ.binary.reshape(-1)[centres.norm(dim=-1) > 0.8].any()
    box = occ.occupied_aabb(margin_cells=0)
    assert (box[:3] >= -0.76).all() and (box[3:] <= 0.76).all()


def test_occupancy_update_budget_pools_and_ema():
    """After the full first update, each update evaluates exactly ``cells`` points, half from the uncarved
    cells and half from the occupied ones, and the EMA follows max(decay * old, new) on the drawn cells."""
    occ = OccupancyGrid(torch.tensor([-1.0, -1, -1, 1, 1, 1]), resolution=16)
    occ.carved.view(16, 16, 16)[:, :, 8:] = False  # carving left the half z < 0
    seen = []

    def density(x):
        seen.append(x.clone())
        return 100.0 * (x.norm(dim=-1) < 0.5).float()

    occ.update(density, step_size=0.01)  # first update: every cell
    assert seen[0].shape[0] == 16**3 and occ.n_updates == 1
    before = occ.ema.clone()
    torch.manual_seed(0)
    occ.update(density, step_size=0.01, cells=512)
    x = seen[1]
    assert x.shape[0] == 512 and occ.n_updates == 2 and int(occ.updates) == 2
    idx, inside = occ.cell_index(x)
    assert inside.all() and occ.carved[idx].all()  # never a carved cell
    occupied_before = (before > before.mean().clamp(max=0.01)) & occ.carved
    assert occupied_before[idx[256:]].all() and not occupied_before[idx[:256]].all()
    expect = before * occ.decay
    vals = 100.0 * (x.norm(dim=-1) < 0.5).float() * 0.01
    for i, v in zip(idx.tolist(), vals.tolist()):
        expect[i] = max(expect[i], v)
    torch.testing.assert_close(occ.ema, expect)
    assert not occ.binary.reshape(-1)[~occ.carved].any()
    loaded = OccupancyGrid(occ.aabb, resolution=16)
    loaded.load_state_dict(occ.state_dict())
    assert loaded.n_updates == 2


def test_carving_keeps_the_ball_and_removes_outside_its_visual_hull():
    from gridfield.render.rays import Intrinsics, camera_rays, look_at

    K = Intrinsics.from_fov(48, 48, 0.9)
    eyes = torch.tensor([[3.0, 0, 0], [-3.0, 0, 0], [0, 3.0, 0], [0, -3.0, 0], [0, 0.3, 3.0], [0, 0.3, -3.0]])
    c2w = look_at(eyes)
    alphas = []
    for cam in c2w:  # exact silhouette of the ball |x| < 0.5: ray-to-centre distance below 0.5
        o, d = camera_rays(cam, K)
        closest = o - (o * d).sum(-1, keepdim=True) * d
        alphas.append((closest.norm(dim=-1) < 0.5).float().view(48, 48))
    occ = OccupancyGrid(torch.tensor([-1.0, -1, -1, 1, 1, 1]), resolution=16)
    occ.carve(c2w, K, torch.stack(alphas), near=2.0)
    centres = occ.cell_centers(jitter=False)
    flat = occ.binary.reshape(-1)
    assert flat[centres.norm(dim=-1) < 0.45].all()
    far = (centres.abs() > 0.75).sum(-1) >= 2  # outside two of the three silhouette cylinders
    assert not flat[far].any()
    assert 0.05 < occ.occupied_fraction() < 0.5


class _Fog:
    """Constant density ``sigma`` and colour depending on position (an analytic field for the renderer)."""

    def __init__(self, sigma):
        self.sigma = sigma

    def density_and_geo(self, x):
        return torch.full((x.shape[0],), self.sigma), None

    def color(self, x, d, geo=None):
        return torch.sigmoid(torch.stack([x[:, 0], x[:, 1], x[:, 2] + d[:, 0]], -1))


def test_render_pipeline_closed_form_and_early_termination():
    from gridfield.render.pipeline import RenderSettings, render_rays, render_rays_eval

    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    s = RenderSettings(near=0.0, far=10.0, step=0.25, background=(1.0, 1.0, 1.0), weight_threshold=0.0)
    o = torch.tensor([[-3.0, 0.2, 0.1], [0.1, 3.0, -0.3], [0.0, 5.0, 5.0]])
    d = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0, -1.0, 0], [1.0, 0, 0]]), dim=-1)
    out = render_rays(_Fog(0.7), o, d, None, aabb, s, stratified=False)
    expect = 1 - torch.exp(torch.tensor(-0.7 * 2.0))  # chord of length 2 in both hitting rays
    torch.testing.assert_close(out["opacity"], torch.stack([expect, expect, torch.tensor(0.0)]))
    torch.testing.assert_close(out["rgb"][2], torch.ones(3))  # a miss shows the background
    # evaluation in rounds (1, 2, 4 samples...) without termination equals the one-pass render
    ev = render_rays_eval(_Fog(0.7), o, d, None, aabb, s, round_samples=1, t_min=0.0)
    for k in ("rgb", "opacity"):
        torch.testing.assert_close(ev[k], out[k])
    torch.testing.assert_close(ev["depth"][:2], out["depth"][:2])
    # dense fog: early termination stops after the first samples, colours within the cut-off
    thick = render_rays_eval(_Fog(40.0), o, d, None, aabb, s, round_samples=2, t_min=1e-3)
    full = render_rays(_Fog(40.0), o, d, None, aabb, s, stratified=False)
    assert thick["n_samples"] < full["n_samples"]
    torch.testing.assert_close(thick["rgb"], full["rgb"], atol=2e-3, rtol=0)


def _distortion_double_sum(w, s0, s1):
    """Mip-NeRF 360's eq. 15 as written: the double sum over sample pairs, one ray ``[S]`` at a time."""
    m = 0.5 * (s0 + s1)
    return (w[:, None] * w[None, :] * (m[:, None] - m[None, :]).abs()).sum() + (w.square() * (s1 - s0)).sum() / 3


def test_distortion_loss_closed_forms_double_sum_and_packed_layout():
    # one sample of weight 1 over [0.2, 0.5]: only the self term, 0.3 / 3; two samples: 2 a b |m1 - m2| + ...
    one = distortion_loss(torch.tensor([[1.0]]), torch.tensor([[0.2]]), torch.tensor([[0.5]]))
    torch.testing.assert_close(one, torch.tensor([0.1]))
    two = distortion_loss(torch.tensor([[0.3, 0.6]]), torch.tensor([[0.0, 0.5]]), torch.tensor([[0.1, 0.7]]))
    torch.testing.assert_close(two, torch.tensor([2 * 0.3 * 0.6 * 0.55 + (0.09 * 0.1 + 0.36 * 0.2) / 3]))
    g = torch.Generator().manual_seed(3)
    R, S = 6, 11
    lengths = torch.tensor([11, 0, 4, 7, 1, 9])
    mask = torch.arange(S)[None] < lengths[:, None]
    dt = torch.rand(R, S, generator=g) * 0.1
    s0 = torch.cumsum(dt, -1) - dt + torch.rand(R, 1, generator=g)  # sorted, gaps allowed
    s0 = s0 + torch.cumsum(torch.rand(R, S, generator=g) * 0.05, -1)
    s1 = s0 + dt
    w = (torch.rand(R, S, generator=g) * mask).requires_grad_()
    padded = distortion_loss(w, s0, s1)
    expect = torch.stack([_distortion_double_sum(w[r], s0[r], s1[r]) for r in range(R)])
    torch.testing.assert_close(padded, expect, rtol=1e-5, atol=1e-6)
    ri, wp, a, b = pack(mask, w, s0, s1)
    packed = distortion_loss(wp, a, b, ri, R)
    torch.testing.assert_close(packed, expect, rtol=1e-5, atol=1e-6)
    cot = torch.randn(R, generator=g)
    (g_ref,) = torch.autograd.grad(expect, w, cot)
    (g_packed,) = torch.autograd.grad(packed, w, cot)
    torch.testing.assert_close(g_packed[mask], g_ref[mask], rtol=1e-5, atol=1e-6)  # padding is not a sample
    # the same weight spread along the ray costs more than concentrated in one sample
    spread = distortion_loss(torch.full((1, 4), 0.25), s0[:1, :4], s1[:1, :4])
    one_spot = distortion_loss(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), s0[:1, :4], s1[:1, :4])
    assert one_spot < spread


def test_render_pipeline_distortion_of_uniform_fog_closed_form():
    from gridfield.render.pipeline import RenderSettings, render_rays

    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    s = RenderSettings(near=0.0, far=10.0, step=0.25, weight_threshold=0.0)
    o, d = torch.tensor([[-3.0, 0.2, 0.1]]), torch.tensor([[1.0, 0, 0]])
    out = render_rays(_Fog(0.7), o, d, None, aabb, s, stratified=False, distortion=True)
    # the chord x in [-1, 1] is t in [2, 4]: 8 steps of 0.25, weights exp(-0.175 i) (1 - exp(-0.175))
    i = torch.arange(8, dtype=torch.float64)
    w = torch.exp(-0.175 * i) * (1 - torch.exp(torch.tensor(-0.175, dtype=torch.float64)))
    s0 = (2.0 + 0.25 * i) / 10.0  # normalised by far - near
    expect = _distortion_double_sum(w, s0, s0 + 0.025)
    torch.testing.assert_close(out["distortion"].double(), expect[None], rtol=1e-4, atol=1e-6)
    assert "distortion" not in render_rays(_Fog(0.7), o, d, None, aabb, s, stratified=False)
