"""Camera and ray conventions (OpenGL camera-to-world, camera looks down -Z, +Y up, pixel centres)
against an independently written pinhole projection."""

import math

import torch

from gridfield.render.rays import Intrinsics, camera_rays, look_at, orbit_poses, ray_aabb, rays_from_pixels


def project(points, c2w, K):
    """World points [N, 3] -> (column, row) pixel coordinates, written from the OpenGL convention."""
    w2c = torch.linalg.inv(c2w.double())
    p = points.double() @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -p[:, 2]  # in front of the camera means negative camera z
    u = K.fx * p[:, 0] / depth + K.cx
    v = -K.fy * p[:, 1] / depth + K.cy  # +Y up, rows grow downwards
    return u, v, depth


def test_world_point_projects_to_the_pixel_whose_ray_hits_it():
    K = Intrinsics.from_fov(40, 30, 0.7)
    c2w = look_at(torch.tensor([[3.0, -2.0, 1.5]]), torch.tensor([0.1, 0.2, -0.1]))[0]
    o, d = camera_rays(c2w, K)
    for row, col in [(0, 0), (7, 31), (29, 39), (15, 20)]:
        k = row * K.width + col  # row-major order
        p = o[k] + 3.7 * d[k]
        u, v, depth = project(p[None], c2w, K)
        assert depth.item() > 0
        assert math.isclose(u.item(), col + 0.5, abs_tol=1e-3) and math.isclose(v.item(), row + 0.5, abs_tol=1e-3)
        assert (int(u.item()), int(v.item())) == (col, row)


def test_identity_camera_axes():
    K = Intrinsics(10.0, 10.0, 5.0, 5.0, 10, 10)
    c2w = torch.eye(4)
    o, d = rays_from_pixels(c2w, K, torch.tensor([5, 5, 9]), torch.tensor([5, 0, 5]))
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(3))
    assert d[0, 2] < -0.99  # centre pixel looks down -Z
    assert d[1, 1] > 0  # top row looks up (+Y)
    assert d[2, 0] > 0  # right column looks right (+X)
    torch.testing.assert_close(o, torch.zeros(3, 3))


def test_intrinsics_from_fov_and_scaling():
    K = Intrinsics.from_fov(800, 800, 0.6911112070083618)
    assert math.isclose(K.fx, 1111.1110311937682, rel_tol=1e-6)  # the NeRF-synthetic focal length
    h = K.scaled(2)
    assert (h.width, h.height, h.cx) == (400, 400, 200) and math.isclose(h.fx, K.fx / 2)


def test_look_at_and_orbit_point_cameras_at_target():
    poses = orbit_poses(8, radius=4.0, elevation_deg=30.0)
    for c2w in poses:
        R = c2w[:3, :3]
        torch.testing.assert_close(R.T @ R, torch.eye(3), atol=1e-5, rtol=0)
        forward = -R[:, 2]
        torch.testing.assert_close(forward, -c2w[:3, 3] / 4.0, atol=1e-5, rtol=0)
        assert math.isclose(c2w[2, 3].item(), 4.0 * math.sin(math.radians(30)), rel_tol=1e-5)
        assert R[2, 1] > 0  # camera up has a positive world-z component


def test_ray_aabb_slabs():
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    o = torch.tensor([[-3.0, 0, 0], [0, 0, 0], [0, 5.0, 0]])
    d = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    t0, t1 = ray_aabb(o, d, aabb)
    assert t0[0] == 2 and t1[0] == 4 and t0[1] == -1 and t1[1] == 1 and t0[2] > t1[2]
