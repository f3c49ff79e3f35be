"""Render rays through a radiance field: march, evaluate density, weights, colour of the samples that
matter, accumulate. The renderer takes the field through two methods (``density_and_geo(x)`` and
``color(x, d, geo)``), never its internals.

:func:`render_rays` is the training path (all samples of a batch in one packed pass, differentiable).
:func:`render_rays_eval` is the evaluation path: it marches a few occupied samples per ray at a time and
drops rays whose transmittance fell below ``t_min`` (early termination), without gradients.

Outputs per ray: ``rgb [N, 3]`` (composited on the field's learned background when it has one, else on
``background``), ``opacity [N]``, ``depth [N]`` (expected distance of the weights, normalised by
opacity), ``n_samples`` (total samples).

Rays always come in world coordinates; :class:`RenderSettings` says which space the field lives in
(:mod:`gridfield.render.spaces`): the scene box, the contracted space of an unbounded scene
(``contraction``) or the NDC space of a forward-facing one (``ndc``). The colour always sees the world
view direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.profiler import record_function

from gridfield.render.marching import march_rays, ray_bounds
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.rays import camera_rays
from gridfield.render.spaces import contract, ndc_rays, warp_distance
from gridfield.render.volrend import accumulate_along_rays, distortion_loss, render_weight_from_density


@dataclass(frozen=True)
class RenderSettings:
    """Marching and compositing settings shared by training and evaluation."""

    near: float = 2.0
    far: float = 6.0
    step: float = 0.01
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    weight_threshold: float = 1e-4  # samples with a smaller weight skip the colour evaluation
    backend: str = "auto"  # fast paths: "auto" | "fast" | "reference" (plain PyTorch everywhere)
    contraction: str = "none"  # "none" | "l2" | "linf": the field sees contract(x / scene_radius)
    scene_radius: float = 1.0  # the inner (uncontracted) region's radius
    ndc: tuple[float, float, float, float, float] | None = None  # (fx, fy, cx, cy, near): NDC rays

    @property
    def step_unit(self) -> float:
        """Marching-step units per field unit: the inner radius in contracted space (steps are warped
        distances there), else 1."""
        return self.scene_radius if self.contraction != "none" else 1.0


def _space_rays(origins: Tensor, dirs: Tensor, s: RenderSettings) -> tuple[Tensor, Tensor]:
    """The rays the marcher walks: the world rays, or their NDC images (unit directions) when ``s.ndc``."""
    if s.ndc is None:
        return origins, dirs
    o, d = ndc_rays(origins, dirs, *s.ndc)
    return o, d / d.norm(dim=-1, keepdim=True)


def _march(o, d, aabb, occupancy, s: RenderSettings, **kwargs):
    return march_rays(o, d, s.near, s.far, s.step, aabb, occupancy, backend=s.backend, contraction=s.contraction,
                      radius=s.scene_radius, **kwargs)


def _background(field, viewdirs: Tensor, s: RenderSettings) -> Tensor:
    """``[N, 3]`` (or ``[3]``): the field's learned background seen along ``viewdirs``, else ``s.background``."""
    learned = getattr(field, "background_color", None)
    bg = learned(viewdirs) if learned is not None else None
    return bg if bg is not None else torch.tensor(s.background, dtype=viewdirs.dtype, device=viewdirs.device)


def distance_span(s: RenderSettings) -> float:
    """The length of a ray's marched range in the distances volume rendering integrates over: ``2 radius``
    of warped distance in contracted space, else ``far - near`` (NDC: the segment's parameter range)."""
    return 2 * s.scene_radius if s.contraction != "none" else s.far - s.near


def _shade(field, origins, dirs, viewdirs, ray_idx, t0, t1, n_rays, s: RenderSettings, trans_in=None,
           distortion: bool = False):
    """Packed samples -> per-ray rgb sum, opacity, depth sum, per-sample transmittance and (``distortion``)
    the per-ray distortion loss over distances normalised by :func:`distance_span` (else None)."""
    with record_function("density"):
        mid = 0.5 * (t0 + t1)
        x = origins[ray_idx] + dirs[ray_idx] * mid[:, None]
        if s.contraction != "none":
            x = contract(x, s.contraction, s.scene_radius)
        sigma, geo = field.density_and_geo(x)
    with record_function("weights"):
        if s.contraction != "none":  # density per warped length (see gridfield.render.spaces)
            t0, t1 = warp_distance(t0, s.scene_radius), warp_distance(t1, s.scene_radius)
        w, trans, alpha = render_weight_from_density(t0, t1, sigma, ray_idx, backend=s.backend)
        if trans_in is not None:  # continuing rays: scale by the transmittance already spent
            w = w * trans_in[ray_idx]
        keep = (w > s.weight_threshold).detach()
        ki = torch.nonzero(keep)[:, 0]
        dist = None
        if distortion:
            span = distance_span(s)
            dist = distortion_loss(w, t0 / span, t1 / span, ray_idx, n_rays)
    with record_function("color"):
        rgb = field.color(x[ki], viewdirs[ray_idx[ki]], None if geo is None else geo[ki])
    with record_function("accumulate"):
        rgb_sum = accumulate_along_rays(w[ki], rgb, ray_idx[ki], n_rays)
        opacity = accumulate_along_rays(w, None, ray_idx, n_rays)[:, 0]
        depth_sum = accumulate_along_rays(w, mid[:, None], ray_idx, n_rays)[:, 0]
    return rgb_sum, opacity, depth_sum, trans * (1 - alpha), dist


def render_rays(field, origins: Tensor, dirs: Tensor, occupancy: OccupancyGrid | None, aabb: Tensor,
                settings: RenderSettings, stratified: bool = True, distortion: bool = False) -> dict[str, Tensor]:
    """Differentiable render of rays ``[N, 3]`` (unit directions) in one packed pass (training).

    ``distortion``: also return ``distortion [N]``, Mip-NeRF 360's distortion loss of each ray
    (:func:`~gridfield.render.volrend.distortion_loss` over distances normalised by :func:`distance_span`).
    """
    n = origins.shape[0]
    o, d = _space_rays(origins, dirs, settings)
    with record_function("march"):
        ray_idx, t0, t1 = _march(o, d, aabb, occupancy, settings, stratified=stratified)
    rgb_sum, opacity, depth_sum, _, dist = _shade(field, o, d, dirs, ray_idx, t0, t1, n, settings,
                                                  distortion=distortion)
    bg = _background(field, dirs, settings)
    out = {"rgb": rgb_sum + (1 - opacity)[:, None] * bg, "opacity": opacity,
           "depth": depth_sum / opacity.clamp_min(1e-6), "n_samples": torch.tensor(ray_idx.numel())}
    if distortion:
        out["distortion"] = dist
    return out


@torch.no_grad()
def render_rays_eval(field, origins: Tensor, dirs: Tensor, occupancy: OccupancyGrid | None, aabb: Tensor,
                     settings: RenderSettings, round_samples: int = 4, max_round_samples: int = 32,
                     t_min: float = 1e-4) -> dict[str, Tensor]:
    """Render rays without gradients, in rounds: each round marches every live ray up to its next
    ``round_samples`` occupied samples (doubling each round, at most ``max_round_samples``), shades them and
    drops rays whose transmittance fell below ``t_min`` (early termination, as Instant-NGP's renderer does),
    so that few samples behind a surface are evaluated. Same outputs as :func:`render_rays`."""
    n, dev = origins.shape[0], origins.device
    views = dirs
    origins, dirs = _space_rays(origins, dirs, settings)
    t_lo, t_hi = ray_bounds(origins, dirs, settings.near, settings.far, aabb, settings.contraction,
                            settings.scene_radius)
    rgb = torch.zeros(n, 3, device=dev)
    opacity, depth, trans = (torch.zeros(n, device=dev) for _ in range(3))
    trans += 1.0
    half = 0.5 * settings.step
    active = torch.nonzero(t_lo + half < t_hi)[:, 0]
    total, k = 0, round_samples
    while active.numel() > 0:
        o, d = origins[active], dirs[active]
        ray_idx, t0, t1, steps = _march(o, d, aabb, occupancy, settings, t_start=t_lo[active], t_stop=t_hi[active],
                                        max_samples=k)
        total += ray_idx.numel()
        if ray_idx.numel() > 0:
            rs, op, ds, _, _ = _shade(field, o, d, views[active], ray_idx, t0, t1, active.numel(), settings,
                                      trans[active])
            rgb[active] += rs
            opacity[active] += op
            depth[active] += ds
            trans[active] = (1 - opacity[active]).clamp_min(0)
        t_lo[active] += steps.to(t_lo.dtype) * settings.step
        active = active[(steps > 0) & (t_lo[active] + half < t_hi[active]) & (trans[active] > t_min)]
        k = min(2 * k, max(max_round_samples, round_samples))
    bg = _background(field, views, settings)
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
