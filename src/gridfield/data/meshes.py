"""Meshes for SDF fitting: loading, normalization into ``[-1, 1]^3``, a built-in torus knot, robust
ground-truth signed distances, and the Instant-NGP/NeuRBF training-sample mixture with an on-disk cache.

Sign convention: the SDF is **negative inside**. Signs come from libigl's fast winding number (inside
where the generalized winding number exceeds 1/2), so slightly open meshes still get a sensible sign.
Everything here is NumPy (float64 in, float32 samples out) and not differentiable.

Example::

    mesh, name = load_mesh("torus_knot")
    unit, norm = normalize(mesh)                    # unit frame; norm.from_unit maps back
    pts, sdf = cached_samples(unit, name, 1 << 20)  # [N, 3], [N]
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gridfield.errors import InputError, missing_extra, regular_file

BUILTINS = ("torus_knot",)
CACHE_VERSION = "sdf-samples-v2"
#: Who needs the mesh extra, for the missing-dependency message.
NEEDED_BY = "gridfield sdf (and make-scene)"


def _trimesh():
    """``trimesh``, or one :class:`InputError` saying how to install the mesh extra."""
    try:
        import trimesh
    except ImportError as e:
        raise missing_extra("trimesh", "mesh", NEEDED_BY, e) from None
    return trimesh


def _igl():
    """``igl`` (libigl), or one :class:`InputError` saying how to install the mesh extra."""
    try:
        import igl
    except ImportError as e:
        raise missing_extra("libigl", "mesh", NEEDED_BY, e) from None
    return igl


@dataclass(frozen=True)
class Normalization:
    """Similarity ``unit = (orig - center) * scale`` between the original frame and ``[-1, 1]^3``."""

    center: np.ndarray  # [3]
    scale: float

    def to_unit(self, p: np.ndarray) -> np.ndarray:
        """``[N, 3]`` original-frame points -> unit frame."""
        return (np.asarray(p, dtype=np.float64) - self.center) * self.scale

    def from_unit(self, p: np.ndarray) -> np.ndarray:
        """``[N, 3]`` unit-frame points -> original frame (for exports)."""
        return np.asarray(p, dtype=np.float64) / self.scale + self.center


def torus_knot_mesh(p: int = 2, q: int = 3, tube: float = 0.45, segments: int = 384, sides: int = 32):
    """A watertight ``(p, q)`` torus-knot tube (trefoil by default), outward-oriented.

    Centre curve ``((2 + cos(q t)) cos(p t), (2 + cos(q t)) sin(p t), -sin(q t))``, swept by a circle
    of radius ``tube`` in the curve's Frenet frame (periodic, since the curve is closed), so rings join
    seamlessly. Returns a ``trimesh.Trimesh`` with ``segments * sides`` vertices.
    """
    trimesh = _trimesh()

    t = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)

    def curve(s):
        r = 2 + np.cos(q * s)
        return np.stack([r * np.cos(p * s), r * np.sin(p * s), -np.sin(q * s)], axis=-1)

    h = 1e-4
    c, d1 = curve(t), (curve(t + h) - curve(t - h)) / (2 * h)
    d2 = (curve(t + h) - 2 * c + curve(t - h)) / h**2
    tan = d1 / np.linalg.norm(d1, axis=-1, keepdims=True)
    nrm = d2 - (d2 * tan).sum(-1, keepdims=True) * tan
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    bin_ = np.cross(tan, nrm)
    a = np.linspace(0.0, 2 * np.pi, sides, endpoint=False)
    ring = np.cos(a)[None, :, None] * nrm[:, None] + np.sin(a)[None, :, None] * bin_[:, None]
    verts = (c[:, None] + tube * ring).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(segments), np.arange(sides), indexing="ij")
    v00, v01 = i * sides + j, i * sides + (j + 1) % sides
    v10, v11 = ((i + 1) % segments) * sides + j, ((i + 1) % segments) * sides + (j + 1) % sides
    faces = np.concatenate([np.stack([v00, v10, v11], -1), np.stack([v00, v11, v01], -1)]).reshape(-1, 3)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def load_mesh(source: str | os.PathLike):
    """Load a triangle mesh (OBJ, PLY, OFF, STL, GLB, ...) or a built-in shape by name.

    Returns ``(trimesh.Trimesh, name)``. Raises :class:`InputError` (one line, naming the file) for a
    missing or unreadable file, an empty mesh, a mesh without faces (a point cloud), non-finite
    vertices or a degenerate (zero-size or flat) extent. Warns when the mesh is not watertight.
    """
    trimesh = _trimesh()

    if str(source) in BUILTINS:
        return torus_knot_mesh(), str(source)
    path = Path(source)
    if not path.exists():
        raise InputError(f"mesh file not found: {path} (or use a built-in shape: {', '.join(BUILTINS)})")
    regular_file(path, "mesh file")
    try:
        obj = trimesh.load(path)
    except Exception as e:  # trimesh raises many types for malformed files
        raise InputError(f"cannot read mesh {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    if isinstance(obj, trimesh.Scene):
        geoms = list(obj.dump()) if obj.geometry else []
        tris = [g for g in geoms if isinstance(g, trimesh.Trimesh)]
        obj = trimesh.util.concatenate(tris) if tris else (geoms[0] if geoms else trimesh.Trimesh())
    if isinstance(obj, trimesh.PointCloud):
        raise InputError(f"{path} is a point cloud ({len(obj.vertices)} points, no faces); a triangle mesh is needed")
    if not isinstance(obj, trimesh.Trimesh) or len(obj.vertices) == 0:
        raise InputError(f"{path} contains no mesh (empty file or unsupported content)")
    if len(obj.faces) == 0:
        raise InputError(f"{path} has {len(obj.vertices)} vertices but no faces (a point cloud?); "
                         "a triangle mesh is needed")
    check_mesh(obj, str(path))
    return obj, path.stem


def check_mesh(mesh, name: str) -> None:
    """Raise :class:`InputError` for a degenerate mesh; warn when it is not watertight."""
    v = np.asarray(mesh.vertices)[np.unique(np.asarray(mesh.faces))]
    if not np.isfinite(v).all():
        raise InputError(f"{name}: mesh has non-finite (NaN/inf) vertex coordinates")
    ext = v.max(0) - v.min(0)
    if ext.max() <= 1e-12 * max(1.0, np.abs(v).max()):
        raise InputError(f"{name}: degenerate scale, all vertices coincide (extent {ext.max():.3g})")
    if ext.min() <= 1e-9 * ext.max() or mesh.area <= 0:
        raise InputError(f"{name}: degenerate scale, the mesh is flat (extent {ext.tolist()}) and encloses no volume")
    if not mesh.is_watertight:
        warnings.warn(f"{name}: mesh is not watertight; signs use the generalized winding number "
                      "(inside where it exceeds 1/2)", stacklevel=2)


def normalize(mesh, radius: float = 0.99):
    """Centre the bounding box at 0 and scale so the farthest vertex lies at ``radius`` (< 1).

    Returns ``(unit_mesh, Normalization)``; the unit mesh fits inside ``[-radius, radius]^3``.
    """
    v = np.asarray(mesh.vertices, dtype=np.float64)
    center = 0.5 * (v.min(0) + v.max(0))
    far = np.linalg.norm(v - center, axis=1).max()
    if not np.isfinite(far) or far <= 0:
        raise InputError(f"degenerate scale: mesh radius {far}")
    norm = Normalization(center, radius / far)
    unit = mesh.copy()
    unit.vertices = norm.to_unit(v)
    return unit, norm


def _vf(mesh) -> tuple[np.ndarray, np.ndarray]:
    return (np.ascontiguousarray(mesh.vertices, dtype=np.float64),
            np.ascontiguousarray(mesh.faces, dtype=np.int64))


def inside(mesh, points: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """``[N]`` bool: fast generalized winding number > 1/2 (robust to small holes)."""
    igl = _igl()

    v, f = _vf(mesh)
    p = np.asarray(points, dtype=np.float64)
    return np.concatenate([igl.fast_winding_number(v, f, np.ascontiguousarray(p[i : i + chunk])) > 0.5
                           for i in range(0, len(p), chunk)] or [np.zeros(0, bool)])


def signed_distance(mesh, points: np.ndarray) -> np.ndarray:
    """``[N]`` float64 exact distance to the triangles (libigl AABB tree, double precision), negative
    inside; the sign comes from :func:`inside` (fast winding number).

    (libigl's own ``SIGNED_DISTANCE_TYPE_FAST_WINDING_NUMBER`` returns distances with ~1e-3 error, so
    the distance and the sign are computed separately.)
    """
    igl = _igl()

    v, f = _vf(mesh)
    p = np.ascontiguousarray(points, dtype=np.float64)
    if len(p) == 0:
        return np.zeros(0)
    d = np.sqrt(igl.point_mesh_squared_distance(p, v, f)[0])
    return np.where(inside(mesh, p), -d, d)


def sample_sdf(mesh, n: int, ratio: tuple[float, float, float] = (4, 3, 1), sigma: float = 0.01,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Training samples (Instant-NGP / NeuRBF mixture) of a unit-frame mesh.

    ``ratio`` splits ``n`` into surface points (SDF 0), surface points plus isotropic Gaussian noise of
    std ``sigma``, and uniform points in ``[-1, 1]^3``. Returns float32 ``points [n, 3]``, ``sdf [n]``.
    """
    trimesh = _trimesh()

    r = np.asarray(ratio, dtype=np.float64)
    if r.shape != (3,) or (r < 0).any() or r.sum() <= 0:
        raise InputError(f"sample ratio must be 3 non-negative numbers, not all 0; got {ratio}")
    counts = np.floor(n * r / r.sum()).astype(int)
    counts[2] = n - counts[:2].sum()
    rng = np.random.default_rng(seed)
    surf, _ = trimesh.sample.sample_surface(mesh, counts[0] + counts[1], seed=rng)
    near = surf[counts[0] :] + rng.normal(0.0, sigma, size=(counts[1], 3))
    uni = rng.uniform(-1.0, 1.0, size=(counts[2], 3))
    off = np.concatenate([near, uni])
    pts = np.concatenate([surf[: counts[0]], off])
    sdf = np.concatenate([np.zeros(counts[0]), signed_distance(mesh, off)])
    return pts.astype(np.float32), sdf.astype(np.float32)


def mesh_key(mesh, *extra) -> str:
    """Content hash of a mesh plus settings (for caches)."""
    h = hashlib.sha1(CACHE_VERSION.encode())
    v, f = _vf(mesh)
    h.update(v.tobytes())
    h.update(f.tobytes())
    h.update(repr(extra).encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """``$GRIDFIELD_CACHE`` or ``~/.cache/gridfield``."""
    return Path(os.environ.get("GRIDFIELD_CACHE", Path.home() / ".cache" / "gridfield"))


def cached(name: str, key: str, make) -> dict[str, np.ndarray]:
    """Load ``<cache>/<name>-<key>.npz`` or compute ``make() -> dict`` and save it atomically."""
    path = cache_dir() / "sdf" / f"{name}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            pass  # a corrupt cache entry is recomputed
    data = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **data)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not write cache {path}: {e}", stacklevel=2)
    return data


def cached_samples(unit_mesh, name: str, n: int, ratio=(4, 3, 1), sigma: float = 0.01, seed: int = 0):
    """:func:`sample_sdf` through the on-disk cache (keyed by mesh content and every setting)."""
    key = mesh_key(unit_mesh, n, tuple(float(r) for r in ratio), sigma, seed)
    d = cached(f"{name}-samples", key, lambda: dict(zip(("points", "sdf"),
                                                            sample_sdf(unit_mesh, n, ratio, sigma, seed))))
    return d["points"], d["sdf"]
