"""Mesh loading, normalization, ground-truth SDF and the sample mixture, against analytic shapes."""

import warnings

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("igl")

from gridfield.data import meshes  # noqa: E402
from gridfield.errors import InputError  # noqa: E402


def box_sdf(p, half):
    """Exact SDF of an axis-aligned box with half extents ``half`` (Inigo Quilez's formula)."""
    q = np.abs(p) - half
    return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)


def test_signed_distance_sphere_matches_analytic():
    r = 0.5
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=r)
    p = np.random.default_rng(0).uniform(-1, 1, (4000, 3))
    exact = np.linalg.norm(p, axis=1) - r
    sd = meshes.signed_distance(sphere, p)
    # the inscribed polytope lies between the sphere and the sphere shrunk by ``dev`` (the smallest
    # distance from the centre to a face plane), so its SDF differs from the sphere's by at most dev
    dev = r - np.abs((sphere.face_normals * sphere.triangles[:, 0]).sum(1)).min()
    assert 0 < dev < 3e-3
    assert np.abs(sd - exact).max() <= dev + 1e-9
    far = np.abs(exact) > dev
    assert np.array_equal(sd[far] < 0, exact[far] < 0)
    assert np.array_equal(meshes.inside(sphere, p[far]), exact[far] < 0)


def test_signed_distance_box_is_exact():
    half = np.array([0.3, 0.5, 0.7])
    box = trimesh.creation.box(extents=2 * half)
    p = np.random.default_rng(1).uniform(-1, 1, (4000, 3))
    np.testing.assert_allclose(meshes.signed_distance(box, p), box_sdf(p, half), atol=1e-9)


def test_sample_mixture_ratio_and_values():
    r = 0.5
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=r)
    n = 8000
    pts, sdf = meshes.sample_sdf(sphere, n, ratio=(4, 3, 1), sigma=0.01, seed=3)
    assert pts.shape == (n, 3) and sdf.shape == (n,) and pts.dtype == np.float32
    surf, near, uni = pts[:4000], pts[4000:7000], pts[7000:]
    assert np.all(sdf[:4000] == 0) and np.abs(np.linalg.norm(surf, axis=1) - r).max() < 3e-3
    np.testing.assert_allclose(sdf[4000:], np.linalg.norm(pts[4000:], axis=1) - r, atol=3e-3)
    # noise std per coordinate 0.01: the signed offsets from the surface have std ~0.01
    assert 0.008 < np.std(np.linalg.norm(near, axis=1) - r) < 0.012
    assert np.abs(uni).max() <= 1 and abs(uni.mean()) < 0.05 and np.abs(uni).mean() > 0.45
    with pytest.raises(InputError, match="ratio"):
        meshes.sample_sdf(sphere, 10, ratio=(0, 0, 0))


def test_normalization_round_trip_and_radius():
    mesh = trimesh.creation.box(extents=(10.0, 2.0, 4.0))
    mesh.apply_translation([100.0, -5.0, 3.0])
    unit, norm = meshes.normalize(mesh)
    assert np.isclose(np.linalg.norm(unit.vertices, axis=1).max(), 0.99)
    np.testing.assert_allclose(unit.bounds.sum(0), 0, atol=1e-12)
    np.testing.assert_allclose(norm.from_unit(unit.vertices), mesh.vertices, atol=1e-9)


def test_torus_knot_is_a_closed_tube_of_the_right_volume():
    tube, segments, sides = 0.45, 384, 32
    knot = meshes.torus_knot_mesh(tube=tube, segments=segments, sides=sides)
    assert knot.is_watertight and knot.is_winding_consistent and knot.volume > 0
    # Pappus: a tube of radius a around a closed curve of length L encloses pi a^2 L (a < curvature
    # radius); the polygonal cross-section scales the area by (n / 2 pi) sin(2 pi / n).
    t = np.linspace(0, 2 * np.pi, 200_001)
    c = np.stack([(2 + np.cos(3 * t)) * np.cos(2 * t), (2 + np.cos(3 * t)) * np.sin(2 * t), -np.sin(3 * t)], 1)
    length = np.linalg.norm(np.diff(c, axis=0), axis=1).sum()
    expected = np.pi * tube**2 * length * sides / (2 * np.pi) * np.sin(2 * np.pi / sides)
    assert abs(knot.volume / expected - 1) < 5e-3
    mesh, name = meshes.load_mesh("torus_knot")
    assert name == "torus_knot" and len(mesh.faces) == len(knot.faces)


def test_bad_inputs_raise_one_line_errors(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "nope.obj"
    (tmp_path / "garbage.stl").write_bytes(b"\x00\x01 not a mesh at all" * 3)
    cases["garbage"] = tmp_path / "garbage.stl"
    (tmp_path / "empty.obj").write_text("")
    cases["empty"] = tmp_path / "empty.obj"
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(50, 3))).export(tmp_path / "cloud.ply")
    cases["cloud"] = tmp_path / "cloud.ply"
    (tmp_path / "point.obj").write_text("v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n")
    cases["degenerate"] = tmp_path / "point.obj"
    (tmp_path / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 3\nf 2 4 3\n")
    cases["flat"] = tmp_path / "flat.obj"
    for what, path in cases.items():
        with pytest.raises(InputError) as e:
            meshes.load_mesh(path)
        msg = str(e.value)
        assert "\n" not in msg and path.name in msg, (what, msg)


def test_open_mesh_warns_and_keeps_robust_sign(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    open_sphere = trimesh.Trimesh(sphere.vertices, sphere.faces[3:], process=False)  # a small hole
    open_sphere.export(tmp_path / "open.ply")
    with pytest.warns(UserWarning, match="not watertight"):
        mesh, _ = meshes.load_mesh(tmp_path / "open.ply")
    p = np.random.default_rng(2).uniform(-1, 1, (3000, 3))
    exact = np.linalg.norm(p, axis=1) - 0.5
    ok = np.abs(exact) > 0.05
    assert np.array_equal(meshes.signed_distance(mesh, p[ok]) < 0, exact[ok] < 0)


def test_sample_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDFIELD_CACHE", str(tmp_path))
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    a = meshes.cached_samples(sphere, "ball", 2000, seed=1)
    assert len(list((tmp_path / "sdf").glob("ball-samples-*.npz"))) == 1
    monkeypatch.setattr(meshes, "sample_sdf", lambda *a, **k: pytest.fail("cache was not used"))
    b = meshes.cached_samples(sphere, "ball", 2000, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not list((tmp_path / "sdf").glob("*.tmp*"))


def test_watertight_builtin_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meshes.check_mesh(meshes.torus_knot_mesh(segments=64, sides=12), "knot")
