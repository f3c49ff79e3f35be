"""Ray marching into packed samples: uniform steps inside the scene box, empty space skipped by an
occupancy grid, samples of each ray contiguous and front to back.

Candidates are laid out as a padded ``[R, S]`` block (``S`` = steps of the longest ray inside the
box), tested against the occupancy grid and compacted with ``nonzero``: plain tensor work, no loop
over rays or samples, so it runs the same on CPU and CUDA. For long rays use ``max_steps`` chunks
(``t_offset``), as :func:`gridfield.render.pipeline.render_rays_eval` does for early termination.

Unbounded scenes (``contraction="l2"`` or ``"linf"``, :mod:`gridfield.render.spaces`): steps are uniform
in the warped distance ``u`` instead of ``t`` (no box: the whole ray from ``near`` to ``far``), the
occupancy grid is queried at contracted points, and the samples come back in world distances.

Example::

    ray_idx, t0, t1 = march_rays(o, d, near=2.0, far=6.0, step=0.01, aabb=aabb, occupancy=occ)
"""

from __future__ import annotations

import torch
from torch import Tensor

from gridfield.fast import render as fast
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.rays import ray_aabb
from gridfield.render.spaces import contract, unwarp_distance, warp_distance


def ray_bounds(origins: Tensor, dirs: Tensor, near: float, far: float, aabb: Tensor, contraction: str = "none",
               radius: float = 1.0) -> tuple[Tensor, Tensor]:
    """``[N]`` entry and exit distances: the ray's part inside both ``[near, far]`` and the box; with a
    ``contraction``, the warped distances of ``near`` and ``far`` (the box is all of space)."""
    if contraction != "none":
        lims = warp_distance(torch.tensor([near, far], dtype=origins.dtype, device=origins.device), radius)
        return lims[0].expand(origins.shape[0]).clone(), lims[1].expand(origins.shape[0]).clone()
    t0, t1 = ray_aabb(origins, dirs, aabb)
    return t0.clamp(min=near), t1.clamp(max=far)


def march_rays(origins: Tensor, dirs: Tensor, near: float, far: float, step: float, aabb: Tensor,
               occupancy: OccupancyGrid | None = None, stratified: bool = False,
               t_start: Tensor | None = None, t_stop: Tensor | None = None,
               max_steps: int | None = None, backend: str = "auto", contraction: str = "none",
               radius: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Packed samples along rays ``origins, dirs [N, 3]`` (unit directions).

    Samples are intervals ``[t, t + step)`` starting at ``t_start + k * step`` (plus one shared
    uniform offset per ray in ``[0, step)`` when ``stratified``), kept when the interval's midpoint is
    before ``t_stop`` and in an occupied cell. ``t_start``/``t_stop`` default to :func:`ray_bounds`.
    At most ``max_steps`` steps per ray are considered (all by default). With a ``contraction`` (``"l2"``,
    ``"linf"``; scene ``radius``), ``step``, ``t_start`` and ``t_stop`` are warped distances, the occupancy
    grid lives in contracted space, and the returned intervals are world distances.

    ``backend``: ``"auto"`` uses the C++ kernel (:mod:`gridfield.fast.render`, same random numbers drawn; in
    the box the same samples bit for bit, contracted the same up to points within a rounding of a cell face)
    on CPU float32, the plain-PyTorch reference otherwise; ``"fast"`` / ``"reference"`` force one.

    Returns ``ray_indices [M]`` (long, non-decreasing), ``t_starts [M]``, ``t_ends [M]``.
    Not differentiable (the bounds are not learned).
    """
    if step <= 0:
        raise ValueError(f"march step must be > 0, got {step}")
    if t_start is None or t_stop is None:
        b0, b1 = ray_bounds(origins, dirs, near, far, aabb, contraction, radius)
        t_start = b0 if t_start is None else t_start
        t_stop = b1 if t_stop is None else t_stop
    empty = torch.empty(0, device=origins.device)
    live = t_stop > t_start
    if not bool(live.any()):
        return empty.long(), empty, empty
    n_steps = int(torch.ceil(((t_stop - t_start)[live]).max() / step).item())
    if max_steps is not None:
        n_steps = min(n_steps, max_steps)
    rays = torch.nonzero(live)[:, 0]
    mod = fast.module(backend, origins, dirs, t_start, t_stop)
    if mod is not None:
        offset = torch.zeros_like(t_start)
        if stratified:  # the reference's random numbers: one per live ray
            offset[rays] = torch.rand(rays.shape[0], device=origins.device) * step
        return fast.march(mod, origins, dirs, t_start, t_stop, offset, n_steps, step, occupancy, contraction, radius)
    if contraction != "none":
        return _march_warped(origins, dirs, step, occupancy, stratified, t_start, t_stop, n_steps, rays,
                             contraction, radius)
    return _march_reference(origins, dirs, step, occupancy, stratified, t_start, t_stop, n_steps, rays)


def _march_reference(origins, dirs, step, occupancy, stratified, t_start, t_stop, n_steps, rays):
    k = torch.arange(n_steps, device=origins.device, dtype=origins.dtype)
    offset = torch.rand(rays.shape[0], 1, device=origins.device) * step if stratified else 0.0
    t0 = t_start[rays, None] + offset + k * step  # [R, S]
    mid = t0 + 0.5 * step
    keep = mid < t_stop[rays, None]
    if occupancy is not None:
        pts = origins[rays, None] + dirs[rays, None] * mid[..., None]
        keep &= occupancy.query(pts.reshape(-1, 3)).reshape(keep.shape)
    sel = torch.nonzero(keep)
    t_starts = t0[sel[:, 0], sel[:, 1]]
    return rays[sel[:, 0]], t_starts, t_starts + step


def _march_warped(origins, dirs, step, occupancy, stratified, u_start, u_stop, n_steps, rays, kind, radius):
    """:func:`_march_reference` in warped distances: occupancy at contracted midpoints, world intervals out."""
    k = torch.arange(n_steps, device=origins.device, dtype=origins.dtype)
    offset = torch.rand(rays.shape[0], 1, device=origins.device) * step if stratified else 0.0
    u0 = u_start[rays, None] + offset + k * step  # [R, S]
    keep = u0 + 0.5 * step < u_stop[rays, None]
    t0, t1 = unwarp_distance(u0, radius), unwarp_distance(u0 + step, radius)
    if occupancy is not None:
        pts = origins[rays, None] + dirs[rays, None] * (0.5 * (t0 + t1))[..., None]
        keep &= occupancy.query(contract(pts.reshape(-1, 3), kind, radius)).reshape(keep.shape)
    sel = torch.nonzero(keep)
    return rays[sel[:, 0]], t0[sel[:, 0], sel[:, 1]], t1[sel[:, 0], sel[:, 1]]
