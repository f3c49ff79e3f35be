"""Render a triangle mesh into a Blender-format scene (RGBA PNGs + ``transforms_*.json``) or a forward-facing
LLFF capture (``poses_bounds.npy`` + ``images_8/``).

An independent renderer for tests and demos, with no downloads: rays through pixel centres (the
same OpenGL convention as the loader), cast against the mesh with trimesh (Embree through
``embreex`` when installed, trimesh's pure-Python engine otherwise), ``supersample^2`` rays per pixel
averaged for anti-aliased colour and alpha. Shading is view-independent: a smooth albedo that varies
with position times ``ambient + (1 - ambient) * |n . l|`` for a fixed world light, so the scene is a
true radiance field (Lambertian). The mesh is normalised to radius ``object_radius`` about the
origin; cameras sit on a sphere of radius ``distance`` looking at it (train: a Fibonacci lattice;
test: a second, rotated lattice).

``layout="llff"`` (:func:`llff_cameras`, :func:`llff_world`): the mesh in front of a textured wall with a
textured floor, so every ray hits something and the depth bounds are finite, seen by a handheld-style
rig: cameras on a jittered, roughly planar grid (``spread * distance`` wide) all looking along ``+Y`` at
points near the object with a small random roll. Written in LLFF's own layout: the images in
``images_8/`` (the rendered size is LLFF's 1/8 size) and ``poses_bounds.npy`` (``[N, 17]``: per image a 3x5
matrix, columns down, right, back, position and ``(h, w, f)`` of the 8x larger full-resolution images,
then the near and far bounds: the 0.1 and 99.9 percentiles of the view's hit depths along its optical axis,
as LLFF computes them from its sparse points). Load it with ``load_scene(out, downscale=8)``.

Example::

    make_scene("torus_knot", "scene/", views=20, size=64)
    make_scene("torus_knot", "llff/", views=32, size=504, height=378, layout="llff")
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
LAYOUTS = ("blender", "llff")
#: LLFF's fern at 1/8 resolution: focal 407 px for 504 px wide images (a horizontal field of view of 63 degrees)
LLFF_CAMERA_ANGLE_X = 2 * math.atan(0.5 * 504 / 407.0)
LLFF_FACTOR = 8  # the rendered images are images_8/: poses_bounds.npy describes images 8x larger
WALL = 2.0  # the backdrop wall is the plane y = WALL * object_radius (the cameras sit near y = -distance)


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


def _cast(mesh, intersector, c2w: torch.Tensor, K: Intrinsics, supersample: int, ambient: float,
          colour=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``supersample^2`` rays per pixel of ``K``: colour ``[R, 3]``, hit ``[R]`` (0 or 1) and the depth of the
    hit along the camera's optical axis ``[R]`` (NaN where nothing is hit). ``colour(tri [M], loc [M, 3])``
    gives the albedo ``[M, 3]`` of the hits (default :func:`albedo`)."""
    o, d = camera_rays(c2w, K.scaled(1.0 / supersample))
    o, d = o.double().numpy(), d.double().numpy()
    tri, ray, loc = intersector.intersects_id(o, d, multiple_hits=False, return_locations=True)
    rgb = np.zeros((o.shape[0], 3))
    hit = np.zeros(o.shape[0])
    depth = np.full(o.shape[0], np.nan)
    n = mesh.face_normals[tri]
    shade = ambient + (1 - ambient) * np.abs(n @ LIGHT)
    rgb[ray] = (albedo(loc) if colour is None else colour(tri, loc)) * shade[:, None]
    hit[ray] = 1.0
    depth[ray] = (loc - o[ray]) @ -c2w[:3, 2].double().numpy()  # OpenGL: the camera looks down -Z
    return rgb, hit, depth


def _pool(values: np.ndarray, K: Intrinsics, s: int) -> np.ndarray:
    """Average ``[H*s * W*s, C]`` supersampled values into ``[H, W, C]`` pixels."""
    return values.reshape(K.height, s, K.width, s, -1).mean(axis=(1, 3))


def render_view(mesh, intersector, c2w: torch.Tensor, K: Intrinsics, supersample: int = 2,
                ambient: float = 0.3, colour=None) -> np.ndarray:
    """RGBA ``[H, W, 4]`` float in ``[0, 1]`` of ``mesh`` seen from ``c2w`` (straight, not premultiplied alpha);
    ``colour``: see :func:`_cast`."""
    rgb, hit, _ = _cast(mesh, intersector, c2w, K, supersample, ambient, colour)
    rgb, alpha = _pool(rgb, K, supersample), _pool(hit, K, supersample)[..., 0]
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


def _check_request(views, test_views, size, supersample, distance, object_radius, layout="blender", height=None,
                   spread=0.25) -> None:
    def whole(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, np.integer))

    def real(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float, np.number)) and math.isfinite(v)

    if layout not in LAYOUTS:
        raise InputError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    for name, v, low in (("views", views, 2 if layout == "llff" else 1), ("test_views", test_views, 1),
                         ("size", size, 4), ("supersample", supersample, 1)):
        if not whole(v) or v < low:
            why = " (an LLFF scene holds out every 8th view: one to train, one to test)" if name == "views" \
                and layout == "llff" else ""
            raise InputError(f"{name} must be a whole number >= {low}{why}, got {v!r}")
    if height is not None and (not whole(height) or height < 4):
        raise InputError(f"height must be a whole number >= 4 (or None), got {height!r}")
    for name, v in (("distance", distance), ("object_radius", object_radius), ("spread", spread)):
        if not real(v) or v <= 0:
            raise InputError(f"{name} must be a finite positive number, got {v!r}")
    if distance <= object_radius:
        raise InputError(f"camera distance {distance} must exceed the object radius {object_radius}")
    if spread > 2:
        raise InputError(f"spread must be at most 2 (the camera grid's width over the camera distance), got {spread!r}")


def make_scene(mesh_or_builtin: str, out: str | Path, views: int = 50, test_views: int = 10, size: int = 128,
               distance: float = 4.0, object_radius: float = 1.0, supersample: int = 2,
               upper: bool = False, layout: str = "blender", height: int | None = None, spread: float = 0.25,
               seed: int = 0) -> Path:
    """Render a scene of ``size`` (width) x ``height`` pixels (None: ``size`` for blender, ``3/4 size`` for llff).

    ``layout="blender"``: ``views`` train and ``test_views`` test (also written as ``val``) images.
    ``layout="llff"``: ``views`` images of a forward-facing capture (module docstring; ``test_views`` and
    ``upper`` do not apply: the loader holds out every 8th image), cameras from :func:`llff_cameras` with
    ``spread`` and ``seed``.
    ``mesh_or_builtin``: a mesh file or a built-in name of :mod:`gridfield.data.meshes`. Returns ``out``
    (absolute). Every argument, the output folder (:func:`gridfield.outdir.check_out_dir`) and the
    memory of one view (:func:`gridfield.memory.estimate_scene_bytes`) are checked before the mesh is
    loaded; the scene is written atomically (:func:`gridfield.outdir.write_dir_atomically`): ``out``
    holds the whole scene or is left as it was.
    """
    _check_request(views, test_views, size, supersample, distance, object_radius, layout, height, spread)
    if height is None:
        height = size if layout == "blender" else max(4, round(size * 3 / 4))
    big = max(size, height)
    memory.guard(memory.estimate_scene_bytes(big, supersample), f"rendering one view ({size} x {height} "
                 f"pixels, {supersample}^2 rays each)", f"--size {size} --supersample {supersample}")
    check_out_dir(out)
    mesh, _ = load_mesh(mesh_or_builtin)
    mesh, _ = normalize(mesh, radius=object_radius)
    if layout == "llff":
        return _make_llff(mesh, out, views, size, height, distance, object_radius, supersample, spread, seed)
    isect = _intersector(mesh)
    K = Intrinsics.from_fov(size, height, CAMERA_ANGLE_X)
    train = look_at(torch.from_numpy(fibonacci_sphere(views, 0.0, upper) * distance))
    test = look_at(torch.from_numpy(fibonacci_sphere(test_views, 1.0, upper) * distance))

    def write(folder: Path) -> None:
        _write_split(folder, "train", mesh, isect, train, K, supersample)
        for split in ("test", "val"):
            _write_split(folder, split, mesh, isect, test, K, supersample)

    return write_dir_atomically(out, write)


# -- LLFF (forward-facing) -----------------------------------------------------------------------------
def llff_cameras(views: int, distance: float = 4.0, spread: float = 0.25, object_radius: float = 1.0,
                 seed: int = 0) -> torch.Tensor:
    """Camera-to-world ``[views, 4, 4]`` (OpenGL) of a handheld forward-facing rig, in image order.

    A grid of ``ceil(sqrt(4/3 views))`` columns, ``spread * distance`` wide and 3/4 as high, in the plane
    ``y = -distance`` (filled row by row from the top), each camera jittered by up to a quarter of a grid
    cell sideways and 5% of the grid's width in depth, looking (up ``+Z``) at a point within
    ``0.1 object_radius`` of the origin, rolled by up to 2 degrees about its optical axis.
    """
    rng = np.random.default_rng(seed)
    cols = math.ceil(math.sqrt(views * 4 / 3))
    rows = math.ceil(views / cols)
    width = spread * distance
    cell = width / max(cols - 1, 1)
    xs = (np.arange(cols) - (cols - 1) / 2) * cell
    zs = -(np.arange(rows) - (rows - 1) / 2) * cell * 0.75 * (cols - 1) / max(rows - 1, 1)
    grid = np.array([(x, z) for z in zs for x in xs][:views])
    eye = np.stack([grid[:, 0] + rng.uniform(-0.25, 0.25, views) * cell,
                    -distance + rng.uniform(-0.05, 0.05, views) * width,
                    grid[:, 1] + rng.uniform(-0.25, 0.25, views) * cell], -1)
    target = rng.uniform(-0.1, 0.1, (views, 3)) * object_radius / math.sqrt(3)
    c2w = look_at(torch.from_numpy(eye), torch.from_numpy(target)).double()
    roll = np.radians(rng.uniform(-2.0, 2.0, views))
    rz = np.zeros((views, 3, 3))
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = (np.cos(roll), -np.sin(roll), np.sin(roll),
                                                                         np.cos(roll), 1.0)
    c2w[:, :3, :3] = c2w[:, :3, :3] @ torch.from_numpy(rz)
    return c2w


def llff_floor_z(c2w: torch.Tensor, object_radius: float = 1.0) -> float:
    """Height of the LLFF scene's floor for the cameras ``c2w [N, 4, 4]``: the object's bottom
    (``-object_radius``), or half an object radius below the lowest camera when that is lower."""
    return min(-object_radius, float(c2w[:, 2, 3].min()) - 0.5 * object_radius)


def _checker(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """A checkerboard with soft edges, ``[N]`` in ``[0, 1]``, of squares ``period / 2`` wide."""
    return 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * math.pi * u / period) * np.sin(2 * math.pi * v / period))


def llff_world(mesh, object_radius: float, floor_z: float, extent: float):
    """``(scene mesh, colour)``: ``mesh`` plus a wall (the plane ``y = WALL * object_radius`` above ``floor_z``) and
    a floor (the plane ``z = floor_z`` in front of the wall), each one triangle covering at least ``extent``
    either side, overlapping along their corner (no edge or gap in view for a ray to slip through);
    ``colour(tri [M], loc [M, 3])`` is the albedo ``[M, 3]``: :func:`albedo` on the object, soft
    checkerboards on the wall (warm) and the floor (cool)."""
    import trimesh  # deferred: the optional mesh extra

    y, e = WALL * object_radius, extent
    tris = np.array([[[-3 * e, y, floor_z - 1], [3 * e, y, floor_z - 1], [0, y, floor_z - 1 + 3 * e]],  # wall
                     [[-3 * e, y + 1, floor_z], [3 * e, y + 1, floor_z], [0, y + 1 - 3 * e, floor_z]]])  # floor
    n_obj, n0 = len(mesh.faces), len(mesh.vertices)
    verts = np.concatenate([np.asarray(mesh.vertices, np.float64), tris.reshape(-1, 3)])
    faces = np.concatenate([np.asarray(mesh.faces), np.array([[0, 1, 2], [3, 4, 5]]) + n0])
    scene = trimesh.Trimesh(verts, faces, process=False)
    wall_rgb, floor_rgb = np.array([0.85, 0.68, 0.5]), np.array([0.45, 0.58, 0.78])

    def colour(tri: np.ndarray, loc: np.ndarray) -> np.ndarray:
        out = albedo(loc)
        wall, floor = tri == n_obj, tri == n_obj + 1
        r = object_radius
        out[wall] = wall_rgb * (0.45 + 0.55 * _checker(loc[wall, 0], loc[wall, 2], 0.6 * r))[:, None]
        out[floor] = floor_rgb * (0.45 + 0.55 * _checker(loc[floor, 0], loc[floor, 1], 0.8 * r))[:, None]
        return out

    return scene, colour


def _make_llff(mesh, out, views, width, height, distance, object_radius, supersample, spread, seed) -> Path:
    import imageio.v3 as iio

    poses = llff_cameras(views, distance, spread, object_radius, seed)
    extent = 4 * (distance + WALL * object_radius) + 10  # far beyond any view's footprint
    scene, colour = llff_world(mesh, object_radius, llff_floor_z(poses, object_radius), extent)
    isect = _intersector(scene)
    K = Intrinsics.from_fov(width, height, LLFF_CAMERA_ANGLE_X)
    full = [K.height * LLFF_FACTOR, K.width * LLFF_FACTOR, K.fx * LLFF_FACTOR]  # (h, w, f) of LLFF's images/

    def write(folder: Path) -> None:
        (folder / f"images_{LLFF_FACTOR}").mkdir()
        rows = []
        for i, c2w in enumerate(poses):
            rgb, hit, depth = _cast(scene, isect, c2w, K, supersample, 0.3, colour)
            if not hit.all():  # the wall and floor are far larger than any view: a bug, not bad input
                raise RuntimeError(f"LLFF view {i}: {int((hit == 0).sum())} rays missed the backdrop")
            img = np.clip(_pool(rgb, K, supersample), 0, 1)
            iio.imwrite(folder / f"images_{LLFF_FACTOR}" / f"image{i:03d}.png", (img * 255 + 0.5).astype(np.uint8))
            near, far = np.percentile(depth, [0.1, 99.9])  # LLFF's close_depth, inf_depth
            m = c2w.numpy()
            # LLFF's columns: down, right, back (OpenGL: right, up, back), the position, (h, w, f)
            mat = np.stack([-m[:3, 1], m[:3, 0], m[:3, 2], m[:3, 3], full], 1)
            rows.append(np.concatenate([mat.reshape(-1), [near, far]]))
        np.save(folder / "poses_bounds.npy", np.stack(rows))

    return write_dir_atomically(out, write)
