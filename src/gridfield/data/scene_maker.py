"""Render a triangle mesh into a Blender-format scene (RGBA PNGs + ``transforms_*.json``).

An independent renderer for tests and demos, with no downloads: rays through pixel centres (the
same OpenGL convention as the loader), cast against the mesh with trimesh (Embree through
``embreex`` when installed, trimesh's pure-Python engine otherwise), ``supersample^2`` rays per pixel
averaged for anti-aliased colour and alpha. Shading is view-independent: a smooth albedo that varies
with position times ``ambient + (1 - ambient) * |n . l|`` for a fixed world light, so the scene is a
true radiance field (Lambertian). The mesh is normalised to radius ``object_radius`` about the
origin; cameras sit on a sphere of radius ``distance`` looking at it (train: a Fibonacci lattice;
test: a second, rotated lattice).

Example::

    make_scene("torus_knot", "scene/", views=20, size=64)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from gridfield import memory
from gridfield.data.meshes import load_mesh, normalize
from gridfield.errors import InputError
from gridfield.outdir import check_out_dir, write_dir_atomically
from gridfield.render.rays import Intrinsics, camera_rays, look_at

CAMERA_ANGLE_X = 0.6911112070083618  # the NeRF-synthetic scenes' horizontal field of view
LIGHT = np.array([0.4, -0.5, 0.77]) / np.linalg.norm([0.4, -0.5, 0.77])


def fibonacci_sphere(n: int, offset: float = 0.0, upper: bool = False) -> np.ndarray:
    """``n`` nearly uniform unit vectors ``[n, 3]`` (rotated about z by ``offset`` radians);
    ``upper`` keeps them on the ``z > 0.05`` cap."""
    i = np.arange(n) + 0.5
    z = 1 - i / n * (0.95 if upper else 2.0)
    r = np.sqrt(np.clip(1 - z * z, 0, 1))
    phi = i * math.pi * (3 - math.sqrt(5)) + offset
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


def albedo(p: np.ndarray) -> np.ndarray:
    """A smooth position-dependent colour ``[N, 3]`` in ``[0.15, 0.95]`` for surface points ``[N, 3]``."""
    c = 0.55 + 0.4 * np.sin(np.stack([2.5 * p[:, 0] + 0.3, 2.5 * p[:, 1] + 2.1, 2.5 * p[:, 2] + 4.2], -1))
    return np.clip(c, 0.15, 0.95)


def _intersector(mesh):
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector  # needs embreex

        return RayMeshIntersector(mesh)
    except Exception:  # noqa: BLE001 - fall back to trimesh's pure engine
        from trimesh.ray.ray_triangle import RayMeshIntersector

        return RayMeshIntersector(mesh)


def render_view(mesh, intersector, c2w: torch.Tensor, K: Intrinsics, supersample: int = 2,
                ambient: float = 0.3) -> np.ndarray:
    """RGBA ``[H, W, 4]`` float in ``[0, 1]`` of ``mesh`` seen from ``c2w`` (straight, not premultiplied alpha)."""
    s = supersample
    o, d = camera_rays(c2w, K.scaled(1.0 / s))
    o, d = o.double().numpy(), d.double().numpy()
    tri, ray, loc = intersector.intersects_id(o, d, multiple_hits=False, return_locations=True)
    rgb = np.zeros((o.shape[0], 3))
    hit = np.zeros(o.shape[0])
    n = mesh.face_normals[tri]
    shade = ambient + (1 - ambient) * np.abs(n @ LIGHT)
    rgb[ray] = albedo(loc) * shade[:, None]
    hit[ray] = 1.0
    h, w = K.height, K.width
    rgb = rgb.reshape(h, s, w, s, 3).mean(axis=(1, 3))
    alpha = hit.reshape(h, s, w, s).mean(axis=(1, 3))
    straight = rgb / np.maximum(alpha, 1e-8)[..., None]
    return np.concatenate([np.clip(straight, 0, 1), alpha[..., None]], -1)


def _write_split(out: Path, split: str, mesh, isect, poses: torch.Tensor, K: Intrinsics, ss: int) -> None:
    import imageio.v3 as iio

    (out / split).mkdir(parents=True, exist_ok=True)
    frames = []
    for i, c2w in enumerate(poses):
        rgba = render_view(mesh, isect, c2w, K, ss)
        iio.imwrite(out / split / f"r_{i}.png", (rgba * 255 + 0.5).astype(np.uint8))
        frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.double().tolist()})
    meta = {"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}
    (out / f"transforms_{split}.json").write_text(json.dumps(meta, indent=1))


def _check_request(views, test_views, size, supersample, distance, object_radius) -> None:
    def whole(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, np.integer))

    def real(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float, np.number)) and math.isfinite(v)

    for name, v, low in (("views", views, 1), ("test_views", test_views, 1), ("size", size, 4),
                         ("supersample", supersample, 1)):
        if not whole(v) or v < low:
            raise InputError(f"{name} must be a whole number >= {low}, got {v!r}")
    for name, v in (("distance", distance), ("object_radius", object_radius)):
        if not real(v) or v <= 0:
            raise InputError(f"{name} must be a finite positive number, got {v!r}")
    if distance <= object_radius:
        raise InputError(f"camera distance {distance} must exceed the object radius {object_radius}")


def make_scene(mesh_or_builtin: str, out: str | Path, views: int = 50, test_views: int = 10, size: int = 128,
               distance: float = 4.0, object_radius: float = 1.0, supersample: int = 2,
               upper: bool = False) -> Path:
    """Render ``views`` train and ``test_views`` test (also written as ``val``) images of ``size^2``.

    ``mesh_or_builtin``: a mesh file or a built-in name of :mod:`gridfield.data.meshes`. Returns ``out``
    (absolute). Every argument, the output folder (:func:`gridfield.outdir.check_out_dir`) and the
    memory of one view (:func:`gridfield.memory.estimate_scene_bytes`) are checked before the mesh is
    loaded; the scene is written atomically (:func:`gridfield.outdir.write_dir_atomically`): ``out``
    holds the whole scene or is left as it was.
    """
    _check_request(views, test_views, size, supersample, distance, object_radius)
    memory.guard(memory.estimate_scene_bytes(size, supersample), f"rendering one view ({size} x {size} "
                 f"pixels, {supersample}^2 rays each)", f"--size {size} --supersample {supersample}")
    check_out_dir(out)
    mesh, _ = load_mesh(mesh_or_builtin)
    mesh, _ = normalize(mesh, radius=object_radius)
    isect = _intersector(mesh)
    K = Intrinsics.from_fov(size, size, CAMERA_ANGLE_X)
    train = look_at(torch.from_numpy(fibonacci_sphere(views, 0.0, upper) * distance))
    test = look_at(torch.from_numpy(fibonacci_sphere(test_views, 1.0, upper) * distance))

    def write(folder: Path) -> None:
        _write_split(folder, "train", mesh, isect, train, K, supersample)
        for split in ("test", "val"):
            _write_split(folder, split, mesh, isect, test, K, supersample)

    return write_dir_atomically(out, write)
