"""IoU, Chamfer, F-score, normal consistency and marching cubes against hand-computable cases."""

import numpy as np
import pytest

from gridfield.metrics_sdf import chamfer, iou, iou_grid, lattice_chunks, uniform_points

R, D = 0.5, 0.2  # sphere radius, shift


def sphere_sdf(center):
    return lambda p: np.linalg.norm(p - np.asarray(center, np.float32), axis=1) - R


def shifted_spheres_iou(r, d):
    """Two balls of radius r at distance d: lens volume pi (4r + d)(2r - d)^2 / 12."""
    lens = np.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    return lens / (2 * 4 / 3 * np.pi * r**3 - lens)


def sphere_points(n, center=(0, 0, 0), seed=0):
    u = np.random.default_rng(seed).normal(size=(n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return R * u + np.asarray(center), u


def test_lattice_chunks_order_matches_meshgrid():
    r = 7
    pts = np.concatenate(list(lattice_chunks(r, chunk=50)))
    t = np.linspace(-1, 1, r, dtype=np.float32)
    ref = np.stack(np.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)
    np.testing.assert_array_equal(pts, ref)


def test_iou_identical_and_shifted_sphere():
    gt = sphere_sdf((0, 0, 0))
    assert iou_grid(gt, lambda p: gt(p) < 0, 64) == 1.0
    assert iou(np.zeros(5, bool), np.zeros(5, bool)) == 1.0
    expected = shifted_spheres_iou(R, D)  # 0.5506
    got = iou_grid(sphere_sdf((D, 0, 0)), lambda p: gt(p) < 0, 64, chunk=10_000)
    assert abs(got - expected) < 0.01
    flat = np.concatenate([gt(p) < 0 for p in lattice_chunks(64)])
    assert iou_grid(sphere_sdf((D, 0, 0)), flat, 64) == got  # precomputed occupancy, same lattice
    p = uniform_points(200_000, seed=1)
    assert abs(iou(sphere_sdf((D, 0, 0))(p) < 0, gt(p) < 0) - expected) < 0.01
    with pytest.raises(ValueError, match="entries"):
        iou_grid(gt, flat[:-1], 64)


def test_chamfer_identical_is_zero():
    a, n = sphere_points(5000)
    m = chamfer(a, a, n, n)
    assert m["chamfer_l1"] == 0 and m["chamfer_l2"] == 0
    assert m["fscore@0.01"] == 1 and m["fscore@0.002"] == 1 and m["normal_consistency"] == pytest.approx(1)


def test_chamfer_shifted_sphere_matches_closed_form():
    # For a point r u on one sphere, the distance to the other is |sqrt(r^2 + d^2 - 2 r d u_x) - r|
    # with u_x ~ U(-1, 1); integrating gives E|.| = d / 2 and E[.^2] = d^2 / 3 (for d < r), so
    # chamfer_l1 = d / 2 and chamfer_l2 = d^2 / 3.
    a, _ = sphere_points(40_000, (D, 0, 0), seed=1)
    b, _ = sphere_points(40_000, (0, 0, 0), seed=2)
    t = 0.05
    m = chamfer(a, b, thresholds=(t,))
    assert m["chamfer_l1"] == pytest.approx(D / 2, rel=0.02)
    assert m["chamfer_l2"] == pytest.approx(D**2 / 3, rel=0.02)
    # precision at t: fraction with |s - r| <= t; s in [r - t, r + t] <=> u_x in an interval of
    # length ((r + t)^2 - (r - t)^2) / (2 r d) = 2 t / d out of 2: P = R = t / d (point spacing
    # ~0.004 << t keeps the sampling bias small)
    assert m[f"fscore@{t:g}"] == pytest.approx(t / D, rel=0.05)


def test_fscore_by_hand():
    a = np.array([[0.0, 0, 0], [1, 0, 0], [5, 0, 0]])
    b = np.array([[0.0, 0, 0.005], [1, 0, 0.5]])
    m = chamfer(a, b, thresholds=(0.01,))
    p, r = 1 / 3, 1 / 2  # a: only (0,0,0) within 0.01; b: only its first point
    assert m["fscore@0.01"] == pytest.approx(2 * p * r / (p + r))
    d_ab = [0.005, 0.5, np.hypot(4, 0.5)]
    d_ba = [0.005, 0.5]
    assert m["chamfer_l1"] == pytest.approx(0.5 * (np.mean(d_ab) + np.mean(d_ba)))


def test_mesh_metrics_and_marching_cubes_on_sphere():
    trimesh = pytest.importorskip("trimesh")
    from gridfield.metrics_sdf import marching_cubes, mesh_metrics

    r = 48
    vol = np.concatenate([sphere_sdf((0, 0, 0))(p) for p in lattice_chunks(r)]).reshape(r, r, r)
    mesh = marching_cubes(vol)
    assert mesh.is_watertight and mesh.volume == pytest.approx(4 / 3 * np.pi * R**3, rel=0.01)
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - R).max() < 2 / (r - 1)
    ref = trimesh.creation.icosphere(subdivisions=4, radius=R)
    same = mesh_metrics(ref, ref, 5000)
    assert same["chamfer_l1"] == 0 and same["fscore@0.002"] == 1 and same["normal_consistency"] == 1
    m = mesh_metrics(mesh, ref, 20_000)
    # point-sampled Chamfer has a floor of about half the sample spacing sqrt(4 pi R^2 / n) ~ 6e-3
    assert m["chamfer_l1"] < 1e-2 and m["normal_consistency"] > 0.99 and m["fscore@0.01"] > 0.8
    empty = marching_cubes(np.ones((8, 8, 8), np.float32))
    assert len(empty.faces) == 0 and mesh_metrics(empty, ref)["chamfer_l1"] == np.inf
