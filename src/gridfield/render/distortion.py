"""Lens distortion of real captures: OpenCV's radial-tangential model and its fisheye model.

Both map undistorted normalised camera coordinates ``(x, y) = (X / Z, Y / Z)`` (OpenCV axes: x right,
y down) to distorted ones, which the pixel grid samples:

* ``opencv`` (COLMAP ``OPENCV``, ``SIMPLE_RADIAL``, ``RADIAL``; Instant-NGP / nerfstudio ``k1 k2 p1 p2
  k3``): ``r^2 = x^2 + y^2``, ``x_d = x (1 + k1 r^2 + k2 r^4 + k3 r^6) + 2 p1 x y + p2 (r^2 + 2 x^2)``,
  ``y_d = y (...) + p1 (r^2 + 2 y^2) + 2 p2 x y``;
* ``fisheye`` (COLMAP / nerfstudio ``OPENCV_FISHEYE``, ``k1..k4``): ``theta = atan(r)``,
  ``theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)``, ``(x_d, y_d) = theta_d / r (x, y)``.

Rays need the inverse: :func:`undistort` runs Newton's method (a fixed number of iterations, no host
sync), as nerfstudio and COLMAP do. Not differentiable in the coefficients (they are fixed by the capture).
"""

from __future__ import annotations

import torch
from torch import Tensor

NEWTON_STEPS = 10


def distort(x: Tensor, y: Tensor, k1=0.0, k2=0.0, k3=0.0, k4=0.0, p1=0.0, p2=0.0,
            fisheye: bool = False) -> tuple[Tensor, Tensor]:
    """Distorted normalised coordinates ``(x_d, y_d)`` (same shapes) of undistorted ``(x, y)``."""
    if fisheye:
        r = torch.sqrt(x * x + y * y)
        theta = torch.atan(r)
        t2 = theta * theta
        theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        scale = torch.where(r > 1e-12, theta_d / r.clamp_min(1e-12), torch.ones_like(r))
        return x * scale, y * scale
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


def undistort(xd: Tensor, yd: Tensor, k1=0.0, k2=0.0, k3=0.0, k4=0.0, p1=0.0, p2=0.0,
              fisheye: bool = False, steps: int = NEWTON_STEPS) -> tuple[Tensor, Tensor]:
    """Undistorted ``(x, y)`` whose :func:`distort` is ``(xd, yd)``: Newton's method from ``(xd, yd)``."""
    if fisheye:  # solve theta_d(theta) = |(xd, yd)| for theta, then r = tan(theta)
        rd = torch.sqrt(xd * xd + yd * yd)
        theta = rd.clone()
        for _ in range(steps):
            t2 = theta * theta
            f = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - rd
            df = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
            theta = (theta - f / df).clamp(0.0, 1.5)  # < pi / 2: in front of the camera
        scale = torch.where(rd > 1e-12, torch.tan(theta) / rd.clamp_min(1e-12), torch.ones_like(rd))
        return xd * scale, yd * scale
    x, y = xd.clone(), yd.clone()
    for _ in range(steps):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dr = k1 + r2 * (2 * k2 + r2 * 3 * k3)  # d radial / d r2
        fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        a = radial + 2 * x * x * dr + 2 * p1 * y + 6 * p2 * x  # d fx / dx
        b = 2 * x * y * dr + 2 * p1 * x + 2 * p2 * y  # d fx / dy = d fy / dx
        d = radial + 2 * y * y * dr + 6 * p1 * y + 2 * p2 * x  # d fy / dy
        det = a * d - b * b
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        x, y = x - (d * fx - b * fy) / det, y - (a * fy - b * fx) / det
    return x, y
