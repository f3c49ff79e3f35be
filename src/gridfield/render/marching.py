"""Ray marching into packed samples: uniform steps inside the scene box, empty space skipped by an
occupancy grid, samples of each ray contiguous and front to back.

Candidates are laid out as a padded ``[R, S]`` block (``S`` = steps of the longest ray inside the
box), tested against the occupancy grid and compacted with ``nonzero``: plain tensor work, no loop
over rays or samples, so it runs the same on CPU and CUDA. ``max_samples`` marches each ray only to its next
few occupied samples, as :func:`gridfield.render.pipeline.render_rays_eval` does for early termination.

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
               radius: float = 1.0, max_samples: int | None = None) -> tuple[Tensor, ...]:
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

    ``max_samples``: a ray stops after that many kept samples, and a fourth output says how many steps each
    ray considered (long ``[N]``: the next round of :func:`gridfield.render.pipeline.render_rays_eval`
    starts that many steps further on), so that evaluation can end rays sample by sample.

    Returns ``ray_indices [M]`` (long, non-decreasing), ``t_starts [M]``, ``t_ends [M]`` (and, with
    ``max_samples``, ``steps [N]``). Not differentiable (the bounds are not learned).
    """
    if step <= 0:
        raise ValueError(f"march step must be > 0, got {step}")
    if t_start is None or t_stop is None:
        b0, b1 = ray_bounds(origins, dirs, near, far, aabb, contraction, radius)
        t_start = b0 if t_start is None else t_start
        t_stop = b1 if t_stop is None else t_stop
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    empty = torch.empty(0, device=origins.device)
    live = t_stop > t_start
    if not bool(live.any()):
        none = (empty.long(), empty, empty)
        return none + (torch.zeros_like(t_start, dtype=torch.long),) if max_samples else none
    n_steps = int(torch.ceil(((t_stop - t_start)[live]).max() / step).item())
    if max_steps is not None:
        n_steps = min(n_steps, max_steps)
    rays = torch.nonzero(live)[:, 0]
    mod = fast.module(backend, origins, dirs, t_start, t_stop)
    if mod is not None:
        offset = torch.zeros_like(t_start)
        if stratified:  # the reference's random numbers: one per live ray
            offset[rays] = torch.rand(rays.shape[0], device=origins.device) * step
        return fast.march(mod, origins, dirs, t_start, t_stop, offset, n_steps, step, occupancy, contraction, radius,
                          max_samples)
    offset = torch.rand(rays.shape[0], 1, device=origins.device) * step if stratified else 0.0
    u0 = t_start[rays, None] + offset + torch.arange(n_steps, device=origins.device, dtype=origins.dtype) * step
    inside = u0 + 0.5 * step < t_stop[rays, None]  # [R, S]; false from a ray's first step past t_stop on
    if contraction != "none":
        t0, t1 = unwarp_distance(u0, radius), unwarp_distance(u0 + step, radius)
    else:
        t0, t1 = u0, u0 + step
    keep = inside
    if occupancy is not None:
        mid = u0 + 0.5 * step if contraction == "none" else 0.5 * (t0 + t1)
        pts = (origins[rays, None] + dirs[rays, None] * mid[..., None]).reshape(-1, 3)
        pts = pts if contraction == "none" else contract(pts, contraction, radius)
        keep = inside & occupancy.query(pts).reshape(inside.shape)
    if max_samples:
        keep, considered = _first_samples(keep, inside, max_samples)
    sel = torch.nonzero(keep)
    out = rays[sel[:, 0]], t0[sel[:, 0], sel[:, 1]], t1[sel[:, 0], sel[:, 1]]
    if not max_samples:
        return out
    steps = torch.zeros_like(t_start, dtype=torch.long)
    steps[rays] = considered
    return out + (steps,)


def _first_samples(keep: Tensor, inside: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` kept samples of each row of ``keep [R, S]``, and how many steps each row considered:
    up to and including its ``n``-th kept sample, else all its ``inside`` steps."""
    count = keep.cumsum(1)
    full = count[:, -1] >= n
    nth = (count >= n).to(torch.uint8).argmax(1)  # first step holding the n-th kept sample
    return keep & (count <= n), torch.where(full, nth + 1, inside.sum(1))
