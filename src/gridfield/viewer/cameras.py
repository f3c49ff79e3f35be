"""Cameras between viser and gridfield.

viser describes a camera by its position, an orientation quaternion ``wxyz`` (``P_world = R p_cam +
t``) in the OpenCV convention (``+Z`` forward, ``+Y`` down) and a vertical field of view; gridfield's
renderer takes an OpenGL camera-to-world matrix (looks down ``-Z``, ``+Y`` up,
:mod:`gridfield.render.rays`) and pinhole :class:`~gridfield.render.rays.Intrinsics`. The two frames
differ by ``diag(1, -1, -1)`` on the camera axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gridfield.render.rays import Intrinsics

#: Camera axes OpenCV -> OpenGL (and back: it is its own inverse).
FLIP = np.diag([1.0, -1.0, -1.0])


def quat_to_matrix(wxyz) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` -> rotation matrix ``[3, 3]`` (normalised first)."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def matrix_to_quat(rot) -> np.ndarray:
    """Rotation matrix ``[3, 3]`` -> unit quaternion ``(w, x, y, z)`` with ``w >= 0`` (Shepperd's method)."""
    m = np.asarray(rot, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = 2 * math.sqrt(1 + tr)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2 * math.sqrt(1 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2 * math.sqrt(1 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2 * math.sqrt(1 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


@dataclass(frozen=True)
class ViewCamera:
    """A browser camera as viser reports it: ``position`` (3), ``wxyz`` (OpenCV convention), vertical
    field of view ``fov`` (radians) and the canvas ``aspect`` (width / height)."""

    position: tuple[float, float, float]
    wxyz: tuple[float, float, float, float]
    fov: float
    aspect: float

    def c2w(self) -> torch.Tensor:
        """OpenGL camera-to-world ``[4, 4]`` float32 (what :func:`gridfield.render.pipeline.render_camera` takes)."""
        m = np.eye(4)
        m[:3, :3] = quat_to_matrix(self.wxyz) @ FLIP
        m[:3, 3] = self.position
        return torch.from_numpy(m).float()

    def intrinsics(self, width: int) -> Intrinsics:
        """Pinhole intrinsics of a ``width``-pixel render of this camera (height from the aspect, >= 2)."""
        width = max(2, int(width))
        height = max(2, round(width / self.aspect))
        f = 0.5 * height / math.tan(0.5 * self.fov)
        return Intrinsics(f, f, width / 2, height / 2, width, height)


def frustum_pose(c2w) -> tuple[np.ndarray, np.ndarray]:
    """OpenGL camera-to-world ``[4, 4]`` -> viser's ``(wxyz, position)`` for a camera frustum."""
    m = np.asarray(c2w, dtype=np.float64)
    return matrix_to_quat(m[:3, :3] @ FLIP), m[:3, 3].copy()


def vertical_fov(K: Intrinsics) -> float:
    """Vertical field of view (radians) of intrinsics ``K``."""
    return 2 * math.atan(0.5 * K.height / K.fy)


def orbit_position(radius: float, elevation_deg: float, azimuth_deg: float = 45.0) -> np.ndarray:
    """A point on the orbit sphere (Blender world, ``+Z`` up) at the given elevation and azimuth (degrees)."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    return radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
