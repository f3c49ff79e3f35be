"""Scene spaces of the renderer (gridfield.render.spaces): Mip-NeRF 360's contraction against its closed form
and finite differences, the warped marcher against brute force, contracted rendering against the analytic
opacity of a ball, NDC rays against the projective map of points on the world ray, LLFF's NDC re-centring,
and the learned background."""

import math

import numpy as np
import pytest
import torch

from gridfield.data.captures import recenter_poses
from gridfield.errors import InputError
from gridfield.render.marching import march_rays
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.pipeline import RenderSettings, render_rays, render_rays_eval
from gridfield.render.spaces import (
    contract,
    ndc_rays,
    ndc_to_world,
    uncontract,
    unwarp_distance,
    warp_distance,
)


def _points(n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return d / d.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g, dtype=torch.float64) * 50


@pytest.mark.parametrize("kind", ["l2", "linf"])
def test_contraction_closed_form_and_inverse(kind):
    x = _points()
    y = contract(x, kind, radius=2.0)
    norm = y.norm(dim=-1) if kind == "l2" else y.abs().amax(-1)
    assert float(norm.max()) < 2.0
    z = x / 2.0
    zn = z.norm(dim=-1) if kind == "l2" else z.abs().amax(-1)
    inner = zn <= 1
    torch.testing.assert_close(y[inner], z[inner])
    expect = (2 - 1 / zn[~inner])[:, None] * z[~inner] / zn[~inner][:, None]  # Mip-NeRF 360, eq. 10
    torch.testing.assert_close(y[~inner], expect)
    torch.testing.assert_close(uncontract(y, kind, 2.0), x, rtol=1e-9, atol=1e-9)


def test_warped_distance_inverse_and_smooth():
    t = torch.linspace(0, 1000, 100001, dtype=torch.float64)
    u = warp_distance(t, 1.5)
    assert float(u.max()) < 3.0 and bool((u[1:] > u[:-1]).all())
    torch.testing.assert_close(unwarp_distance(u, 1.5), t, rtol=1e-9, atol=1e-9)
    k = torch.tensor([1.5 - 1e-6, 1.5 + 1e-6], dtype=torch.float64)  # C1 at the radius: slope 1 on both sides
    du = warp_distance(k + 1e-7, 1.5) - warp_distance(k, 1.5)
    torch.testing.assert_close(du / 1e-7, torch.ones(2, dtype=torch.float64), rtol=1e-5, atol=0)


def _rays(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = (torch.rand(n, 3, generator=g) - 0.5) * 0.6
    d = torch.randn(n, 3, generator=g)
    return o, d / d.norm(dim=-1, keepdim=True)


def test_warped_march_tiles_the_ray_and_skips_empty_cells():
    o, d = _rays()
    step, near, far = 0.05, 0.1, 200.0
    idx, t0, t1 = march_rays(o, d, near, far, step, torch.tensor([-2.0] * 3 + [2.0] * 3), None, contraction="l2")
    per_ray = torch.bincount(idx, minlength=o.shape[0])
    u0, u1 = warp_distance(torch.tensor(near)), warp_distance(torch.tensor(far))
    assert bool((per_ray == per_ray[0]).all()) and int(per_ray[0]) == math.floor((u1 - u0) / step + 0.5)
    first = torch.cat([torch.tensor([True]), idx[1:] != idx[:-1]])
    torch.testing.assert_close(t0[first], torch.full_like(t0[first], near))
    same = idx[1:] == idx[:-1]
    torch.testing.assert_close(t0[1:][same], t1[:-1][same])  # contiguous, front to back, world distances
    assert float(t1.max()) > 20.0 and float((t1 - t0).max()) > 10 * step  # the far field in long steps
    # an occupancy grid in contracted space keeping the shell 1.2 < |y| < 1.6 only
    occ = OccupancyGrid(torch.tensor([-2.0] * 3 + [2.0] * 3), resolution=64)
    r = occ.cell_centers(jitter=False).norm(dim=-1)
    occ.binary.copy_(((r > 1.2) & (r < 1.6)).reshape(occ.binary.shape))
    idx2, s0, s1 = march_rays(o, d, near, far, step, occ.aabb, occ, contraction="l2")
    mid = o[idx] + d[idx] * (0.5 * (t0 + t1))[:, None]
    want = occ.query(contract(mid))  # brute force on the unpruned samples
    assert idx2.numel() == int(want.sum()) > 0
    torch.testing.assert_close(s0, t0[want])
    torch.testing.assert_close(s1, t1[want])


class BallField:
    """Constant density ``sigma`` inside the world ball of radius ``rho`` (evaluated in contracted space),
    constant colour, and a constant learned background (a field's ``background_color``)."""

    def __init__(self, sigma, rho, bg):
        self.sigma, self.rho, self.bg = sigma, rho, bg

    def density_and_geo(self, y):
        return (uncontract(y).norm(dim=-1) < self.rho).float() * self.sigma, None

    def color(self, y, d, geo):
        return torch.full((y.shape[0], 3), 0.25)

    def background_color(self, d):
        return torch.tensor(self.bg).expand(d.shape[0], 3)


@pytest.mark.parametrize("render", ["train", "eval"])
def test_contracted_render_matches_the_analytic_opacity(render):
    """Rays from inside a ball of constant density (per warped length) that reaches far into the contracted
    region: opacity ``1 - exp(-sigma * U(chord))`` with the chord from the ray origin to the sphere and ``U``
    the warped distance (closed forms)."""
    o, d = _rays(256, seed=3)
    rho, sigma = 6.0, 0.8  # the ball ends well beyond the inner radius 1
    b = (o * d).sum(-1)
    chord = -b + torch.sqrt(b * b - (o * o).sum(-1) + rho * rho)
    s = RenderSettings(near=0.0, far=1e4, step=0.004, contraction="l2", scene_radius=1.0, background=(0, 0, 0))
    field = BallField(sigma, rho, (0.9, 0.1, 0.5))
    box = torch.tensor([-2.0] * 3 + [2.0] * 3)
    fn = render_rays_eval if render == "eval" else render_rays
    kw = {} if render == "eval" else {"stratified": False}
    out = fn(field, o, d, None, box, s, **kw)
    expect = 1 - torch.exp(-sigma * warp_distance(chord))
    torch.testing.assert_close(out["opacity"], expect, atol=2e-3, rtol=0)  # midpoint quadrature, step 0.004
    assert float(out["opacity"].max()) < 0.8  # world lengths would give 1 - exp(-0.8 * 6) = 0.99
    want = 0.25 * expect[:, None] + (1 - expect)[:, None] * torch.tensor([0.9, 0.1, 0.5])
    torch.testing.assert_close(out["rgb"], want, atol=2e-3, rtol=0)


def test_ndc_rays_are_the_projective_image_of_the_world_rays():
    g = torch.Generator().manual_seed(0)
    n, near = 100, 1.0
    fx, fy, cx, cy = 400.0, 380.0, 252.0, 189.0
    o = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 0.3
    d = torch.cat([torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5, -torch.ones(n, 1, dtype=torch.float64)], 1)
    d = d / d.norm(dim=-1, keepdim=True)
    o_ndc, d_ndc = ndc_rays(o, d, fx, fy, cx, cy, near)
    for depth in (1.0, 2.0, 7.5, 1e4):  # world points on the ray at z = -depth
        t = (-depth - o[:, 2]) / d[:, 2]
        p = o + t[:, None] * d
        proj = torch.stack([-fx / cx * p[:, 0] / p[:, 2], -fy / cy * p[:, 1] / p[:, 2], 1 + 2 * near / p[:, 2]], -1)
        s = (proj[:, 2] - o_ndc[:, 2]) / d_ndc[:, 2]
        torch.testing.assert_close(o_ndc + s[:, None] * d_ndc, proj, rtol=1e-9, atol=1e-9)  # on the NDC ray
        assert bool(((s >= -1e-12) & (s < 1)).all())
        torch.testing.assert_close(ndc_to_world(proj, fx, fy, cx, cy, near), p, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(o_ndc[:, 2], torch.full((n,), -1.0, dtype=torch.float64))  # the near plane


def _look(pos, target):
    back = pos - target
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, pos
    return m


def test_llff_recentring_puts_the_mean_camera_at_the_identity():
    """Forward-facing cameras around (5, 2, 1) looking at a point far along +x: after re-centring, the mean
    camera looks down -z from the origin, distances scale by 1 / (0.75 near), and it is a similarity."""
    rng = np.random.default_rng(0)
    pos = np.array([5.0, 2.0, 1.0]) + rng.normal(size=(12, 3)) * 0.2
    c2w = np.stack([_look(p, np.array([40.0, 2.0, 1.0])) for p in pos])
    moved, world_from_scene = recenter_poses(c2w, near_bound=4.0, where="test")
    np.testing.assert_allclose(moved[:, :3, 3].mean(0), 0, atol=1e-12)
    back = moved[:, :3, 2].sum(0)
    np.testing.assert_allclose(back / np.linalg.norm(back), [0, 0, 1], atol=1e-12)
    assert abs(moved[:, :3, 1].sum(0)[0]) < 1e-9  # the mean up lies in the y-z plane
    d01 = np.linalg.norm(moved[0, :3, 3] - moved[1, :3, 3])
    assert d01 == pytest.approx(np.linalg.norm(pos[0] - pos[1]) / 3.0)  # scale 1 / (0.75 * 4)
    back_world = world_from_scene[:3, :3] @ moved[:, :3, 3].T + world_from_scene[:3, 3:4]
    np.testing.assert_allclose(back_world.T, pos, atol=1e-12)
    c2w[3] = _look(pos[3], np.array([-40.0, 2.0, 1.0]))  # one camera turned round
    with pytest.raises(InputError, match="camera 3 looks away"):
        recenter_poses(c2w, near_bound=4.0, where="test")


def test_learned_background_is_trained_and_saved(tmp_path):
    from gridfield.presets import get

    spec = get("nerf", "hash-small", resolution=32, aabb_scale=2.0)
    from dataclasses import replace

    spec = replace(spec, field={**spec.field, "background": "sh"})
    field = spec.build()
    d = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    torch.testing.assert_close(field.background_color(d), torch.full((10, 3), 0.5))  # starts at grey
    assert "background_sh" in field.grid_parameters()
    # the background is what an empty field renders: fit it to blue along every direction
    s = RenderSettings(near=0.05, far=100.0, step=0.05, contraction="l2", background=(1, 1, 1))
    opt = torch.optim.Adam([field.background_sh], lr=0.05)
    o = torch.zeros(256, 3)
    empty = OccupancyGrid(torch.tensor([-2.0] * 3 + [2.0] * 3), resolution=8)
    empty.binary.zero_()
    for _ in range(100):
        d = torch.nn.functional.normalize(torch.randn(256, 3), dim=-1)
        out = render_rays(field, o, d, empty, field.aabb, s)
        loss = (out["rgb"] - torch.tensor([0.1, 0.2, 0.9])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 1e-3, float(loss)  # from 0.137 at grey
    rebuilt = spec.build()
    rebuilt.load_state_dict(field.state_dict())
    torch.testing.assert_close(rebuilt.background_color(d), field.background_color(d))
