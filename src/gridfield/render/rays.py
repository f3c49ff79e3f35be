"""Cameras and rays in the Blender / OpenGL convention.

A camera-to-world matrix ``c2w [4, 4]`` maps camera coordinates to the world; the camera looks down
its ``-Z`` axis with ``+Y`` up and ``+X`` right. Pixel ``(i, j)`` (column ``i``, row ``j`` from the
top) has its centre at ``(i + 0.5, j + 0.5)``; with intrinsics ``(fx, fy, cx, cy)`` its ray direction
in camera space is ``((i + 0.5 - cx) / fx, -(j + 0.5 - cy) / fy, -1)``. Directions returned here are
unit length, so ray parameters ``t`` are distances.

Example::

    K = Intrinsics.from_fov(400, 400, camera_angle_x=0.69)
    o, d = camera_rays(c2w, K)                    # [H*W, 3] each
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from gridfield.render.distortion import undistort


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels, for an image of ``width x height``, and the lens distortion of a real
    capture (:mod:`gridfield.render.distortion`: OpenCV ``k1 k2 p1 p2 k3``, or ``fisheye`` with
    ``k1..k4``; all zero: a pinhole camera)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    k1: float = 0.0
    k2: float = 0.0
    k3: float = 0.0
    k4: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    fisheye: bool = False

    @property
    def distorted(self) -> bool:
        """Whether rays need undistortion (any coefficient non-zero, or a fisheye lens)."""
        return self.fisheye or any((self.k1, self.k2, self.k3, self.k4, self.p1, self.p2))

    def distortion(self) -> dict:
        """The distortion coefficients as keyword arguments of :func:`~gridfield.render.distortion.undistort`."""
        return {"k1": self.k1, "k2": self.k2, "k3": self.k3, "k4": self.k4, "p1": self.p1, "p2": self.p2,
                "fisheye": self.fisheye}

    @staticmethod
    def from_fov(width: int, height: int, camera_angle_x: float) -> Intrinsics:
        """Square pixels, principal point at the image centre, horizontal field of view in radians."""
        f = 0.5 * width / math.tan(0.5 * camera_angle_x)
        return Intrinsics(f, f, width / 2, height / 2, width, height)

    def scaled(self, factor: float) -> Intrinsics:
        """Intrinsics of the image resized by ``1 / factor`` (``factor = 2``: half size)."""
        w, h = round(self.width / factor), round(self.height / factor)
        return replace(self, fx=self.fx / factor, fy=self.fy / factor, cx=self.cx / factor, cy=self.cy / factor,
                       width=w, height=h)  # distortion acts on normalised coordinates: unchanged


def pixel_directions(K: Intrinsics, cols: Tensor, rows: Tensor) -> Tensor:
    """Camera-space directions (not normalised, ``z = -1``) through pixel centres: ``[N]`` -> ``[N, 3]``;
    undistorted (Newton's method) when ``K`` has lens distortion."""
    x = (cols.float() + 0.5 - K.cx) / K.fx
    y = (rows.float() + 0.5 - K.cy) / K.fy  # OpenCV axes (y down), where the distortion model lives
    if K.distorted:
        x, y = undistort(x, y, **K.distortion())
    return torch.stack([x, -y, -torch.ones_like(x)], dim=-1)


@dataclass(frozen=True)
class FrameCameras:
    """Per-frame intrinsics of a capture whose frames' cameras differ, as ``table [F, 10]`` float32 rows
    ``(fx, fy, cx, cy, k1, k2, k3, k4, p1, p2)``, one lens model for all (``fisheye`` or not) and whether
    any frame is ``distorted``; :func:`rays_from_pixels` takes it with each pixel's frame index."""

    table: Tensor
    fisheye: bool
    distorted: bool

    @staticmethod
    def of(Ks: list[Intrinsics]) -> FrameCameras:
        """From one :class:`Intrinsics` per frame (ValueError for fisheye and pinhole lenses mixed)."""
        kinds = {k.fisheye for k in Ks}
        if len(kinds) > 1:
            raise ValueError("per-frame cameras must share one lens model (all fisheye or none)")
        rows = [[k.fx, k.fy, k.cx, k.cy, k.k1, k.k2, k.k3, k.k4, k.p1, k.p2] for k in Ks]
        return FrameCameras(torch.tensor(rows, dtype=torch.float32), kinds.pop(), any(k.distorted for k in Ks))

    def to(self, device) -> FrameCameras:
        return replace(self, table=self.table.to(device))

    def directions(self, frames: Tensor, cols: Tensor, rows: Tensor) -> Tensor:
        """:func:`pixel_directions` with the camera of each pixel's frame: ``frames, cols, rows [N]`` -> ``[N, 3]``."""
        p = self.table.to(cols.device)[frames]
        x = (cols.float() + 0.5 - p[:, 2]) / p[:, 0]
        y = (rows.float() + 0.5 - p[:, 3]) / p[:, 1]
        if self.distorted:
            x, y = undistort(x, y, k1=p[:, 4], k2=p[:, 5], k3=p[:, 6], k4=p[:, 7], p1=p[:, 8], p2=p[:, 9],
                             fisheye=self.fisheye)
        return torch.stack([x, -y, -torch.ones_like(x)], dim=-1)


def rays_from_pixels(c2w: Tensor, K: Intrinsics | FrameCameras, cols: Tensor, rows: Tensor,
                     frames: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """World rays through pixel centres.

    c2w: ``[4, 4]`` (one camera) or ``[N, 4, 4]`` (one per pixel); cols, rows: ``[N]`` integer; with
    per-frame cameras ``K`` (:class:`FrameCameras`), ``frames [N]`` says whose camera each pixel is.
    Returns origins ``[N, 3]`` and unit directions ``[N, 3]`` (differentiable in ``c2w``).
    """
    if isinstance(K, FrameCameras):
        if frames is None:
            raise ValueError("per-frame cameras need the frame index of every pixel")
        d_cam = K.directions(frames, cols, rows).to(c2w)
    else:
        d_cam = pixel_directions(K, cols, rows).to(c2w)
    rot = c2w[..., :3, :3]
    d = (d_cam.unsqueeze(-2) * rot).sum(-1) if rot.ndim == 3 else d_cam @ rot.T
    o = c2w[..., :3, 3].expand_as(d)
    return o, d / d.norm(dim=-1, keepdim=True)


def camera_rays(c2w: Tensor, K: Intrinsics) -> tuple[Tensor, Tensor]:
    """All rays of one camera in row-major pixel order: ``[H * W, 3]`` origins and directions."""
    rows, cols = torch.meshgrid(torch.arange(K.height, device=c2w.device),
                                torch.arange(K.width, device=c2w.device), indexing="ij")
    return rays_from_pixels(c2w, K, cols.reshape(-1), rows.reshape(-1))


def ray_aabb(origins: Tensor, dirs: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor]:
    """Slab test: entry and exit distances ``[N]`` of rays with the box ``aabb = [xmin, ymin, zmin,
    xmax, ymax, zmax]``; rays that miss get ``t_near > t_far``. Not differentiable (used for bounds)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0 = (aabb[:3] - origins) * inv
    t1 = (aabb[3:] - origins) * inv
    return torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """Camera-to-world ``[N, 4, 4]`` for cameras at ``eye [N, 3]`` looking at ``target`` (default origin),
    ``up`` (default ``+Z``, the Blender world's up), OpenGL convention (looks down ``-Z``)."""
    eye = eye.double()
    target = torch.zeros_like(eye) if target is None else target.to(eye).expand_as(eye)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype) if up is None else up.to(eye)
    back = eye - target
    back = back / back.norm(dim=-1, keepdim=True)
    right = torch.cross(up.expand_as(back), back, dim=-1)
    bad = right.norm(dim=-1) < 1e-8  # looking straight along up: pick any right vector
    right[bad] = torch.tensor([1.0, 0.0, 0.0], dtype=eye.dtype)
    right = right / right.norm(dim=-1, keepdim=True)
    cam_up = torch.cross(back, right, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, cam_up, back, eye
    c2w[:, 3, 3] = 1.0
    return c2w.float()


def orbit_poses(n: int, radius: float = 4.0, elevation_deg: float = 30.0) -> Tensor:
    """``n`` cameras on a horizontal circle (a turntable path) looking at the origin: ``[n, 4, 4]``."""
    az = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    el = math.radians(elevation_deg)
    eye = torch.stack([radius * math.cos(el) * torch.cos(az), radius * math.cos(el) * torch.sin(az),
                       torch.full_like(az, radius * math.sin(el))], dim=-1)
    return look_at(eye)
