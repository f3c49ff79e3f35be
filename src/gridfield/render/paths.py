"""Camera paths for videos: an orbit, an LLFF-style spiral, an interpolation through key poses, or a file.

The orbit (:func:`capture_orbit`, :func:`orbit_path`) circles the training cameras' *focus* (the point
nearest to all their optical axes, as Instant-NGP's ``colmap2nerf`` centres a capture) at their mean
distance and elevation about ``+Z``. When the cameras surround the focus (no azimuth gap wider than
90 degrees) it is a full turn; a capture taken from one side (Instant-NGP's fox spans about 90 degrees)
gets a back-and-forth sweep over the captured arc instead, so that no frame looks at a side no photo saw.

All poses are OpenGL camera-to-world ``[N, 4, 4]`` float32 in the scene frame (the frame training ran
in). Files (:func:`read_path_file`) are in the capture's original frame and are mapped with the
inverse of ``world_from_scene``.

Example::

    poses = spiral_poses(train_c2w, 120)                # around the mean training camera
    poses = interpolate_poses(train_c2w[::10], 120)     # through every 10th training camera
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation, Slerp
from torch import Tensor

from gridfield.errors import InputError, regular_file
from gridfield.render.rays import look_at

#: a capture surrounds its focus when no azimuth gap between its cameras is wider than this (degrees)
FULL_TURN_GAP = 90.0


def _mean_pose(c2w: np.ndarray) -> np.ndarray:
    """The average camera ``[4, 4]``: mean position, mean viewing axes re-orthonormalised."""
    pos = c2w[:, :3, 3].mean(0)
    back = c2w[:, :3, 2].mean(0)
    back /= max(np.linalg.norm(back), 1e-12)
    up = c2w[:, :3, 1].mean(0)
    right = np.cross(up, back)
    right /= max(np.linalg.norm(right), 1e-12)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, pos
    return m


def focus_point(c2w: np.ndarray) -> np.ndarray | None:
    """The point ``[3]`` nearest (least squares) to the optical axes of cameras ``[N, 4, 4]`` (OpenGL: they
    look down ``-Z``), or None when the axes are (nearly) parallel or meet far behind or beyond the cameras
    (more than 10 times their spread from their mean position)."""
    c2w = np.asarray(c2w, np.float64)
    pos, fwd = c2w[:, :3, 3], -c2w[:, :3, 2]
    fwd = fwd / np.linalg.norm(fwd, axis=1, keepdims=True).clip(1e-12)
    proj = np.eye(3)[None] - fwd[:, :, None] * fwd[:, None, :]  # [N, 3, 3] onto each axis's normal plane
    a, b = proj.sum(0), np.einsum("nij,nj->i", proj, pos)
    w = np.linalg.eigvalsh(a)
    if w[0] < 1e-6 * max(w[-1], 1e-12):
        return None
    p = np.linalg.solve(a, b)
    spread = max(float(np.linalg.norm(pos - pos.mean(0), axis=1).max()), 1e-9)
    if np.linalg.norm(p - pos.mean(0)) > 10 * spread or ((p - pos) * fwd).sum(1).mean() <= 0:
        return None
    return p


def capture_orbit(c2w: Tensor | np.ndarray) -> dict:
    """The orbit of training cameras ``[N, 4, 4]`` (scene frame, ``+Z`` up): ``center`` (the
    :func:`focus_point`, else the origin), mean ``radius`` and ``elevation`` (degrees) about it, and the
    azimuth range to sweep: ``azimuth`` (start, degrees) and ``sweep`` (360 for a full turn, else the width
    of the captured arc). JSON-ready floats."""
    c2w = np.asarray(c2w, np.float64)
    focus = focus_point(c2w)
    center = np.zeros(3) if focus is None else focus
    q = c2w[:, :3, 3] - center
    r = np.linalg.norm(q, axis=1).clip(1e-12)
    elevation = float(np.degrees(np.arcsin(np.clip(q[:, 2] / r, -1, 1))).mean())
    az = np.sort(np.degrees(np.arctan2(q[:, 1], q[:, 0])))
    gaps = np.diff(np.concatenate([az, az[:1] + 360.0]))
    widest = int(np.argmax(gaps))
    if gaps[widest] <= FULL_TURN_GAP:
        start, sweep = float(az[0]), 360.0
    else:  # the captured arc runs from the camera after the widest gap round to the one before it
        start, sweep = float(az[(widest + 1) % len(az)]), float(360.0 - gaps[widest])
    return {"center": [float(v) for v in center], "radius": float(r.mean()), "elevation": elevation,
            "azimuth": start, "sweep": sweep}


def orbit_path(n: int, radius: float, elevation: float, center=(0.0, 0.0, 0.0), azimuth: float = 0.0,
               sweep: float = 360.0) -> Tensor:
    """``n`` cameras ``[n, 4, 4]`` at ``radius`` and ``elevation`` (degrees) about ``center``, looking at it
    (``+Z`` up): a full turn from ``azimuth`` when ``sweep >= 360``, else from ``azimuth`` to ``azimuth +
    sweep`` and back (eased at the ends, so the video loops)."""
    i = np.arange(n, dtype=np.float64)
    if sweep >= 360.0:
        az = np.radians(azimuth) + i * (2 * math.pi / n)
    else:
        az = np.radians(azimuth + 0.5 * sweep * (1 - np.cos(2 * math.pi * i / n)))
    el = math.radians(elevation)
    eye = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.full(n, math.sin(el))], -1) * radius
    c = torch.tensor(center, dtype=torch.float64)
    return look_at(torch.from_numpy(eye) + c, c)


def stored_orbit_path(n: int, camera: dict) -> Tensor:
    """:func:`orbit_path` of a checkpoint's ``camera`` (:func:`capture_orbit`'s keys). Checkpoints written
    before the orbit had a centre get it from their training cameras (``train_c2w``), or, without those,
    circle the origin in a full turn."""
    if "center" not in camera and camera.get("train_c2w") is not None:
        camera = {**camera, **capture_orbit(camera["train_c2w"])}
    return orbit_path(n, camera["radius"], camera["elevation"], camera.get("center", (0.0, 0.0, 0.0)),
                      camera.get("azimuth", 0.0), camera.get("sweep", 360.0))


def spiral_poses(c2w: Tensor, n: int, rotations: float = 2.0, focus: float | None = None) -> Tensor:
    """``n`` cameras on a spiral around the mean training camera (LLFF's render path): radii from the
    90th percentile of the cameras' offsets in the mean camera's frame, looking at a point ``focus``
    in front of it (default: the mean distance of the cameras to the origin)."""
    poses = c2w.double().numpy()
    mean = _mean_pose(poses)
    local = (poses[:, :3, 3] - mean[:3, 3]) @ mean[:3, :3]
    radii = np.percentile(np.abs(local), 90, axis=0) + 1e-3
    focus = float(np.linalg.norm(mean[:3, 3])) if focus is None else focus
    target = mean[:3, 3] - focus * mean[:3, 2]
    t = np.linspace(0, 2 * math.pi * rotations, n, endpoint=False)
    offsets = np.stack([np.cos(t) * radii[0], -np.sin(t) * radii[1], -np.sin(0.5 * t) * radii[2]], -1)
    eyes = mean[:3, 3] + offsets @ mean[:3, :3].T
    return look_at(torch.from_numpy(eyes), torch.from_numpy(target), torch.from_numpy(mean[:3, 1]))


def interpolate_poses(keys: Tensor, n: int) -> Tensor:
    """``n`` cameras through the key poses ``[K, 4, 4]`` in order: positions linearly, rotations by
    spherical linear interpolation (scipy's ``Slerp``), the same time per segment."""
    k = keys.double().numpy()
    if k.shape[0] < 2:
        return keys.float().expand(n, 4, 4).clone()
    times = np.arange(k.shape[0], dtype=np.float64)
    t = np.linspace(0, k.shape[0] - 1, n)
    rot = Slerp(times, Rotation.from_matrix(k[:, :3, :3]))(t).as_matrix()
    pos = np.stack([np.interp(t, times, k[:, j, 3]) for j in range(3)], -1)
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3], out[:, :3, 3] = rot, pos
    return torch.from_numpy(out).float()


def read_path_file(path: str | Path, world_from_scene: np.ndarray | None = None) -> Tensor:
    """Camera poses ``[N, 4, 4]`` from a JSON file, mapped into the scene frame: a list of 4x4
    camera-to-world matrices, an object with ``frames`` (each with ``transform_matrix``, as in
    transforms.json) or nerfstudio's ``camera_path`` (each with ``camera_to_world``, 16 numbers)."""
    path = regular_file(Path(path), "camera path file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: cannot read JSON ({why})") from None
    if isinstance(data, dict) and isinstance(data.get("frames"), list):
        mats = [f.get("transform_matrix") if isinstance(f, dict) else None for f in data["frames"]]
    elif isinstance(data, dict) and isinstance(data.get("camera_path"), list):
        mats = [f.get("camera_to_world") if isinstance(f, dict) else None for f in data["camera_path"]]
    elif isinstance(data, list):
        mats = data
    else:
        raise InputError(f"{path}: expected a list of 4x4 matrices, 'frames' with 'transform_matrix' or "
                         "nerfstudio's 'camera_path'")
    out = []
    for i, m in enumerate(mats):
        try:
            a = np.asarray(m, dtype=np.float64).reshape(4, 4)
        except (TypeError, ValueError):
            raise InputError(f"{path}: camera {i} is not a 4x4 matrix (16 numbers)") from None
        if not np.isfinite(a).all():
            raise InputError(f"{path}: camera {i} has NaN or infinite entries")
        rot = a[:3, :3]
        s = np.cbrt(np.linalg.det(rot)) if np.linalg.det(rot) > 0 else 0.0
        if s <= 0 or np.abs(rot.T @ rot / s**2 - np.eye(3)).max() > 1e-3:
            raise InputError(f"{path}: camera {i} is not a rigid camera-to-world pose")
        out.append(a)
    if not out:
        raise InputError(f"{path}: no cameras")
    poses = np.stack(out)
    if world_from_scene is not None:
        inv = np.linalg.inv(np.asarray(world_from_scene, np.float64))
        poses = np.einsum("ij,njk->nik", inv, poses)
        poses[:, :3, :3] /= np.cbrt(np.linalg.det(poses[:, :3, :3]))[:, None, None]  # undo the scale
    return torch.from_numpy(poses).float()
