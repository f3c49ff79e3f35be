"""Render rays through a radiance field: march, evaluate density, weights, colour of the samples that
matter, accumulate. The renderer takes the field through two methods (``density_and_geo(x)`` and
``color(x, d, geo)``), never its internals.

:func:`render_rays` is the training path (all samples of a batch in one packed pass, differentiable).
:func:`render_rays_eval` is the evaluation path: it marches ``chunk_steps`` steps at a time and drops
rays whose transmittance fell below ``t_min`` (early termination), without gradients.

Outputs per ray: ``rgb [N, 3]`` (composited on ``background``), ``opacity [N]``, ``depth [N]``
(expected distance of the weights, normalised by opacity), ``n_samples`` (total samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.profiler import record_function

from gridfield.render.marching import march_rays, ray_bounds
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.rays import camera_rays
from gridfield.render.volrend import accumulate_along_rays, render_weight_from_density


@dataclass(frozen=True)
class RenderSettings:
    """Marching and compositing settings shared by training and evaluation."""

    near: float = 2.0
    far: float = 6.0
    step: float = 0.01
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    weight_threshold: float = 1e-4  # samples with a smaller weight skip the colour evaluation
    backend: str = "auto"  # fast paths: "auto" | "fast" | "reference" (plain PyTorch everywhere)


def _shade(field, origins, dirs, ray_idx, t0, t1, n_rays, s: RenderSettings, trans_in=None):
    """Packed samples -> per-ray rgb sum, opacity, depth sum and per-sample transmittance."""
    with record_function("density"):
        mid = 0.5 * (t0 + t1)
        x = origins[ray_idx] + dirs[ray_idx] * mid[:, None]
        sigma, geo = field.density_and_geo(x)
    with record_function("weights"):
        w, trans, alpha = render_weight_from_density(t0, t1, sigma, ray_idx, backend=s.backend)
        if trans_in is not None:  # continuing rays: scale by the transmittance already spent
            w = w * trans_in[ray_idx]
        keep = (w > s.weight_threshold).detach()
        ki = torch.nonzero(keep)[:, 0]
    with record_function("color"):
        rgb = field.color(x[ki], dirs[ray_idx[ki]], None if geo is None else geo[ki])
    with record_function("accumulate"):
        rgb_sum = accumulate_along_rays(w[ki], rgb, ray_idx[ki], n_rays)
        opacity = accumulate_along_rays(w, None, ray_idx, n_rays)[:, 0]
        depth_sum = accumulate_along_rays(w, mid[:, None], ray_idx, n_rays)[:, 0]
    return rgb_sum, opacity, depth_sum, trans * (1 - alpha)


def render_rays(field, origins: Tensor, dirs: Tensor, occupancy: OccupancyGrid | None, aabb: Tensor,
                settings: RenderSettings, stratified: bool = True) -> dict[str, Tensor]:
    """Differentiable render of rays ``[N, 3]`` (unit directions) in one packed pass (training)."""
    n = origins.shape[0]
    with record_function("march"):
        ray_idx, t0, t1 = march_rays(origins, dirs, settings.near, settings.far, settings.step, aabb,
                                     occupancy, stratified=stratified, backend=settings.backend)
    rgb_sum, opacity, depth_sum, _ = _shade(field, origins, dirs, ray_idx, t0, t1, n, settings)
    bg = torch.tensor(settings.background, dtype=rgb_sum.dtype, device=rgb_sum.device)
    return {"rgb": rgb_sum + (1 - opacity)[:, None] * bg, "opacity": opacity,
            "depth": depth_sum / opacity.clamp_min(1e-6), "n_samples": torch.tensor(ray_idx.numel())}


@torch.no_grad()
def render_rays_eval(field, origins: Tensor, dirs: Tensor, occupancy: OccupancyGrid | None, aabb: Tensor,
                     settings: RenderSettings, chunk_steps: int = 64, t_min: float = 1e-4) -> dict[str, Tensor]:
    """Render rays without gradients, ``chunk_steps`` marching steps at a time, dropping rays whose
    transmittance is below ``t_min`` (early termination). Same outputs as :func:`render_rays`."""
    n, dev = origins.shape[0], origins.device
    t_lo, t_hi = ray_bounds(origins, dirs, settings.near, settings.far, aabb)
    rgb = torch.zeros(n, 3, device=dev)
    opacity, depth, trans = (torch.zeros(n, device=dev) for _ in range(3))
    trans += 1.0
    active = torch.nonzero(t_hi > t_lo)[:, 0]
    total = 0
    while active.numel() > 0:
        o, d = origins[active], dirs[active]
        t_end = torch.minimum(t_lo[active] + chunk_steps * settings.step, t_hi[active])
        ray_idx, t0, t1 = march_rays(o, d, 0.0, 0.0, settings.step, aabb, occupancy,
                                     t_start=t_lo[active], t_stop=t_end, max_steps=chunk_steps,
                                     backend=settings.backend)
        total += ray_idx.numel()
        if ray_idx.numel() > 0:
            rs, op, ds, _ = _shade(field, o, d, ray_idx, t0, t1, active.numel(), settings, trans[active])
            rgb[active] += rs
            opacity[active] += op
            depth[active] += ds
            trans[active] = (1 - opacity[active]).clamp_min(0)
        t_lo[active] = t_lo[active] + chunk_steps * settings.step
        active = active[(t_lo[active] < t_hi[active]) & (trans[active] > t_min)]
    bg = torch.tensor(settings.background, dtype=rgb.dtype, device=dev)
    return {"rgb": rgb + (1 - opacity)[:, None] * bg, "opacity": opacity,
            "depth": depth / opacity.clamp_min(1e-6), "n_samples": torch.tensor(total)}


@torch.no_grad()
def render_camera(field, c2w: Tensor, K, occupancy, aabb: Tensor, settings: RenderSettings,
                  chunk: int = 1 << 14) -> dict[str, Tensor]:
    """Render one camera: ``rgb [H, W, 3]``, ``depth [H, W]``, ``opacity [H, W]`` (early termination)."""
    o, d = camera_rays(c2w, K)
    parts = [render_rays_eval(field, o[s : s + chunk], d[s : s + chunk], occupancy, aabb, settings)
             for s in range(0, o.shape[0], chunk)]
    out = {k: torch.cat([p[k] for p in parts]) for k in ("rgb", "depth", "opacity")}
    return {k: v.reshape(K.height, K.width, -1).squeeze(-1) for k, v in out.items()}
