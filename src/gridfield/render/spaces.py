"""The coordinate spaces a radiance field can live in, besides the scene box itself.

* **Contracted** (Mip-NeRF 360, Barron et al. 2022, eq. 10): an unbounded scene is squeezed into a ball
  (``"l2"``) or cube (``"linf"``, nerfstudio's choice for grids) of radius 2: with ``z = x / radius``,
  ``contract(z) = z`` where ``|z| <= 1`` and ``(2 - 1 / |z|) z / |z|`` beyond. The field, the occupancy
  grid and the marcher's occupancy queries all work in contracted coordinates. The marcher steps
  uniformly in the *warped distance* ``u = U(t)`` with ``U(t) = t`` up to ``radius`` and
  ``2 radius - radius^2 / t`` beyond: for rays from the inner region that is a uniform step in contracted
  space (exactly so for rays from the origin), so the far field costs a bounded number of samples (at
  most ``2 radius / step`` per ray). Volume rendering integrates the density over ``u`` as well (the
  field's density is per warped length; world density = density / (t / radius)^2 beyond the radius):
  with world lengths, an untrained field is opaque in the far field, whose long steps then paint each
  training view as a backdrop instead of learning the scene (``docs/nerf.md``, "Scene spaces", has the
  measurements).
* **NDC** (NeRF, Mildenhall et al. 2020, appendix C): forward-facing scenes seen from cameras looking
  down ``-z``; a ray from the plane ``z = -near`` to ``z = -inf`` becomes a segment of ``[-1, 1]^3``.

All functions are plain tensor math (CPU and CUDA), differentiable where it makes sense.
"""

from __future__ import annotations

import torch
from torch import Tensor

CONTRACTIONS = ("none", "l2", "linf")


def _norm(z: Tensor, kind: str) -> Tensor:
    if kind == "l2":
        return z.norm(dim=-1, keepdim=True)
    if kind == "linf":
        return z.abs().amax(dim=-1, keepdim=True)
    raise ValueError(f"contraction must be one of {', '.join(CONTRACTIONS[1:])}, got {kind!r}")


def contract(x: Tensor, kind: str = "l2", radius: float = 1.0) -> Tensor:
    """World points ``[N, 3]`` -> contracted points ``[N, 3]`` with norm < 2 (differentiable)."""
    z = x / radius
    n = _norm(z, kind)
    return torch.where(n <= 1, z, (2 - 1 / n.clamp_min(1)) * z / n.clamp_min(1))


def uncontract(y: Tensor, kind: str = "l2", radius: float = 1.0) -> Tensor:
    """The inverse of :func:`contract`: contracted ``[N, 3]`` (norm < 2) -> world ``[N, 3]``."""
    n = _norm(y, kind)
    r = 1 / (2 - n.clamp(1, 2 - 1e-6))  # world norm (in radius units) of a point beyond the inner region
    return torch.where(n <= 1, y, y / n.clamp_min(1) * r) * radius


def warp_distance(t: Tensor, radius: float = 1.0) -> Tensor:
    """Ray distance ``t`` (>= 0) -> warped distance ``u`` in ``[0, 2 radius)`` (see the module docstring)."""
    return torch.where(t <= radius, t, 2 * radius - radius * radius / t.clamp_min(radius))


def unwarp_distance(u: Tensor, radius: float = 1.0) -> Tensor:
    """The inverse of :func:`warp_distance`: warped ``u`` in ``[0, 2 radius)`` -> ray distance ``t``."""
    return torch.where(u <= radius, u, radius * radius / (2 * radius - u.clamp(radius, 2 * radius * (1 - 1e-7))))


def ndc_rays(origins: Tensor, dirs: Tensor, fx: float, fy: float, cx: float, cy: float, near: float = 1.0
             ) -> tuple[Tensor, Tensor]:
    """Rays ``[N, 3]`` of cameras looking down ``-z`` -> NDC rays (NeRF's ``ndc_rays``, with the principal
    point ``cx, cy`` as the half image size): origins moved to the plane ``z = -near``, then
    ``o' = (-fx / cx * ox / oz, -fy / cy * oy / oz, 1 + 2 near / oz)`` and ``d'`` such that ``o' + s d'``,
    ``s in [0, 1)``, is the image of the ray from ``z = -near`` to ``z = -inf``. Returns ``(o', d')``
    (``d'`` not unit length). Rays must point to ``-z`` (``dz < 0``)."""
    t = -(near + origins[:, 2]) / dirs[:, 2]
    o = origins + t[:, None] * dirs
    ax, ay = -fx / cx, -fy / cy
    oz = o[:, 2]
    o_ndc = torch.stack([ax * o[:, 0] / oz, ay * o[:, 1] / oz, 1 + 2 * near / oz], -1)
    d_ndc = torch.stack([ax * (dirs[:, 0] / dirs[:, 2] - o[:, 0] / oz),
                         ay * (dirs[:, 1] / dirs[:, 2] - o[:, 1] / oz), -2 * near / oz], -1)
    return o_ndc, d_ndc


def ndc_to_world(p: Tensor, fx: float, fy: float, cx: float, cy: float, near: float = 1.0) -> Tensor:
    """The inverse of the NDC map of points: NDC ``[N, 3]`` (``z < 1``) -> camera-frame world ``[N, 3]``."""
    z = 2 * near / (p[:, 2] - 1)
    return torch.stack([-p[:, 0] * z * cx / fx, -p[:, 1] * z * cy / fy, z], -1)
