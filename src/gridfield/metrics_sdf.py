"""SDF and surface metrics: volumetric IoU (lattice, in chunks; random points), Chamfer L1/L2, F-score
and normal consistency (Occupancy Networks / Tatarchenko et al. conventions). NumPy, not differentiable.

Conventions:

* occupancy is ``sdf < 0`` (negative inside); ``iou(a, b) = |a & b| / |a | b|`` (1.0 when both empty);
* Chamfer: ``acc = mean_p d(p, B)`` over points ``p`` sampled on ``A``, ``comp = mean_q d(q, A)``;
  ``chamfer_l1 = (acc + comp) / 2`` with Euclidean distances, ``chamfer_l2`` the same with squared
  distances; ``fscore@t = 2 P R / (P + R)`` with precision ``P`` = fraction of ``A``'s points within
  ``t`` of ``B``, recall ``R`` the converse; ``normal_consistency`` = mean ``|n_p . n_nn(p)|`` both ways;
* :func:`evaluate_sdf` runs the whole protocol (lattice IoU, point IoU, marching cubes, surface
  metrics) against :func:`ground_truth`'s cached reference occupancies;
* :func:`mesh_metrics` divides all distances by the longest side of the reference mesh's bounding box,
  so thresholds ``1e-2`` and ``2e-3`` are fractions of the object size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from gridfield.data.meshes import cached, inside, mesh_key

FSCORE_THRESHOLDS = (1e-2, 2e-3)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean arrays of the same shape (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"iou needs equal shapes, got {a.shape} and {b.shape}")
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def lattice_chunks(resolution: int, chunk: int = 1 << 20) -> Iterator[np.ndarray]:
    """Nodes of a ``resolution^3`` lattice on ``[-1, 1]^3`` (``linspace``), as float32 ``[M, 3]`` slabs.

    Axis 0 varies slowest (``indexing="ij"``): concatenating the chunks and reshaping to
    ``[R, R, R]`` gives ``volume[i, j, k]`` at ``(t_i, t_j, t_k)``. Each slab holds whole ``[R, R]``
    planes, at most ``max(chunk, R^2)`` points.
    """
    if resolution < 2:
        raise ValueError(f"lattice resolution must be >= 2, got {resolution}")
    t = np.linspace(-1.0, 1.0, resolution, dtype=np.float32)
    yy, zz = np.meshgrid(t, t, indexing="ij")
    plane = np.stack([yy.ravel(), zz.ravel()], axis=1)
    step = max(1, chunk // (resolution * resolution))
    for i in range(0, resolution, step):
        xs = t[i : i + step]
        x = np.repeat(xs, len(plane))[:, None]
        yield np.concatenate([x, np.tile(plane, (len(xs), 1))], axis=1)


def iou_grid(pred_sdf: Callable[[np.ndarray], np.ndarray],
             gt_inside: Callable[[np.ndarray], np.ndarray] | np.ndarray,
             resolution: int = 256, chunk: int = 1 << 20) -> float:
    """IoU of ``pred_sdf(p) < 0`` and the reference occupancy over the ``resolution^3`` lattice.

    ``pred_sdf`` takes float32 ``[M, 3]`` points and returns ``[M]``. ``gt_inside`` is either such a
    callable (returning bool) or a precomputed flat ``[resolution^3]`` bool array in
    :func:`lattice_chunks` order. Memory stays ``O(chunk)`` beyond that array.
    """
    if not callable(gt_inside) and np.asarray(gt_inside).size != resolution**3:
        raise ValueError(f"gt_inside has {np.asarray(gt_inside).size} entries, expected {resolution}^3")
    inter = union = start = 0
    for p in lattice_chunks(resolution, chunk):
        b = gt_inside(p) if callable(gt_inside) else gt_inside[start : start + len(p)]
        a, b = np.asarray(pred_sdf(p)) < 0, np.asarray(b, bool)
        start += len(p)
        inter += np.count_nonzero(a & b)
        union += np.count_nonzero(a | b)
    return 1.0 if union == 0 else inter / union


def uniform_points(n: int = 1_000_000, seed: int = 0) -> np.ndarray:
    """``[n, 3]`` float32 uniform points in ``[-1, 1]^3`` (the ``iou_points`` protocol)."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 3)).astype(np.float32)


def surface_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour distances ``[Na]`` from ``a`` to ``b`` and indices into ``b`` (k-d tree)."""
    d, i = cKDTree(np.asarray(b, np.float64)).query(np.asarray(a, np.float64), k=1, workers=-1)
    return d, i


def chamfer(a: np.ndarray, b: np.ndarray, normals_a: np.ndarray | None = None,
            normals_b: np.ndarray | None = None, thresholds=FSCORE_THRESHOLDS) -> dict[str, float]:
    """Chamfer L1/L2, F-scores and (with normals) normal consistency between point sets ``[Na, 3]``, ``[Nb, 3]``.

    ``a`` is the prediction, ``b`` the reference (precision is measured on ``a``).
    """
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"chamfer needs non-empty point sets, got {len(a)} and {len(b)} points")
    d_ab, i_ab = surface_distances(a, b)
    d_ba, i_ba = surface_distances(b, a)
    out = {
        "chamfer_l1": 0.5 * (d_ab.mean() + d_ba.mean()),
        "chamfer_l2": 0.5 * ((d_ab**2).mean() + (d_ba**2).mean()),
    }
    for t in thresholds:
        p, r = (d_ab <= t).mean(), (d_ba <= t).mean()
        out[f"fscore@{t:g}"] = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    if normals_a is not None and normals_b is not None:
        na = normals_a / np.linalg.norm(normals_a, axis=1, keepdims=True)
        nb = normals_b / np.linalg.norm(normals_b, axis=1, keepdims=True)
        out["normal_consistency"] = 0.5 * (np.abs((na * nb[i_ab]).sum(1)).mean()
                                           + np.abs((nb * na[i_ba]).sum(1)).mean())
    return {k: float(v) for k, v in out.items()}


def sample_with_normals(mesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-uniform surface points of a ``trimesh.Trimesh`` and their face normals."""
    import trimesh

    pts, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return pts, np.asarray(mesh.face_normals)[face]


def mesh_metrics(pred, ref, n_points: int = 100_000, seed: int = 0,
                 thresholds=FSCORE_THRESHOLDS) -> dict[str, float]:
    """:func:`chamfer` between surface samples of meshes ``pred`` and ``ref``, in units of ``ref``'s size.

    Distances are divided by the longest side of ``ref``'s bounding box. An empty ``pred`` gives
    infinite distances and zero scores.
    """
    size = float(np.max(ref.bounds[1] - ref.bounds[0]))
    if len(pred.faces) == 0 or pred.area <= 0:
        keys = {"chamfer_l1": np.inf, "chamfer_l2": np.inf, "normal_consistency": 0.0}
        return keys | {f"fscore@{t:g}": 0.0 for t in thresholds}
    pa, na = sample_with_normals(pred, n_points, seed)
    pb, nb = sample_with_normals(ref, n_points, seed)  # same seed: identical meshes give exactly 0
    return chamfer(pa / size, pb / size, na, nb, thresholds)


def ground_truth(unit_mesh, name: str, iou_resolution: int, iou_points: int, seed: int = 0) -> dict:
    """Cached reference occupancies of a unit-frame mesh (fast winding number), for :func:`evaluate_sdf`.

    ``lattice``: ``[R^3]`` bool on :func:`~gridfield.metrics_sdf.lattice_chunks` order, or ``None``
    above ``R = 512`` (then computed chunk by chunk during evaluation); ``points`` ``[n, 3]`` uniform
    with ``inside`` ``[n]``; ``val_points`` / ``val_inside``: 2^16 other points for the running IoU.
    """
    gt: dict = {"lattice": None}
    if iou_resolution <= 512:
        occ = cached(f"{name}-lattice", mesh_key(unit_mesh, iou_resolution), lambda: {"packed": np.packbits(
            np.concatenate([inside(unit_mesh, p) for p in lattice_chunks(iou_resolution)]))})
        gt["lattice"] = np.unpackbits(occ["packed"], count=iou_resolution**3).astype(bool)
    for key, n, s in (("", iou_points, seed), ("val_", 1 << 16, seed + 1)):
        pts = uniform_points(n, s)
        d = cached(f"{name}-{key}points", mesh_key(unit_mesh, n, s), lambda p=pts: {"inside": inside(unit_mesh, p)})
        gt[f"{key}points"], gt[f"{key}inside"] = pts, d["inside"]
    return gt


def evaluate_sdf(pred: Callable[[np.ndarray], np.ndarray], unit_mesh, gt: dict, iou_resolution: int = 256,
                 mesh_resolution: int = 256, chamfer_points: int = 100_000) -> tuple[dict, np.ndarray, Any]:
    """The evaluation protocol in the unit frame: ``(metrics, volume [R, R, R], pred_mesh)``.

    ``pred`` maps float32 ``[M, 3]`` points to ``[M]`` SDF values; ``gt`` is :func:`ground_truth`'s
    dict. ``volume`` is ``pred`` on the ``mesh_resolution^3`` lattice; ``pred_mesh`` its
    marching-cubes zero level set (unit frame; empty when there is no zero crossing).
    """
    volume = np.concatenate([pred(p) for p in lattice_chunks(mesh_resolution)]).reshape([mesh_resolution] * 3)
    if iou_resolution == mesh_resolution and gt["lattice"] is not None:
        iou_g = iou(volume.reshape(-1) < 0, gt["lattice"])
    else:
        ref = gt["lattice"] if gt["lattice"] is not None else (lambda p: inside(unit_mesh, p))
        iou_g = iou_grid(pred, ref, iou_resolution)
    mesh = marching_cubes(volume)
    metrics = {"iou_grid": iou_g, "iou_points": iou(pred(gt["points"]) < 0, gt["inside"]),
               **mesh_metrics(mesh, unit_mesh, chamfer_points)}
    return metrics, volume, mesh


def marching_cubes(volume):
    """Zero level set of ``volume`` ``[R, R, R]`` on the ``linspace(-1, 1, R)`` lattice, outward-facing.

    Returns a ``trimesh.Trimesh`` in the unit frame (empty when there is no sign change).
    """
    import trimesh
    from skimage.measure import marching_cubes as mc

    if not (volume.min() < 0 < volume.max()):
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    r = volume.shape[0]
    v, f, _, _ = mc(volume, level=0.0, spacing=(2 / (r - 1),) * 3)
    mesh = trimesh.Trimesh(v - 1.0, f, process=False)
    if mesh.volume < 0:
        mesh.invert()
    return mesh
