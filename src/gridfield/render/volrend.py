"""Volume rendering in the style of nerfacc: transmittance, weights and accumulation along rays.

Two layouts of the same quantities, tested against each other:

* **padded**: per-sample tensors ``[R, S]`` (``ray_indices=None``); padding samples must carry
  ``alpha = 0`` (or ``sigma * dt = 0``) so they change nothing;
* **packed**: per-sample tensors ``[M]`` with ``ray_indices [M]`` (long, non-decreasing: the samples
  of one ray are contiguous and ordered front to back), as produced by
  :func:`gridfield.render.marching.march_rays`.

With ``tau_i = sigma_i * dt_i`` (optical thickness) and ``alpha_i = 1 - exp(-tau_i)``:
``T_i = prod_{j < i} (1 - alpha_j) = exp(-sum_{j < i} tau_j)`` and ``w_i = T_i * alpha_i``.
The packed exclusive sums are one global cumulative sum in float64 minus the value at each ray's
first sample, so there is no Python loop over rays. Everything is differentiable.

Example::

    w, T = render_weight_from_alpha(torch.tensor([[0.0, 0.3, 0.8, 0.8]]))
    # T = [[1, 1, 0.7, 0.14]], w = [[0, 0.3, 0.56, 0.112]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from gridfield.fast import render as fast

ALPHA_MAX = 1.0 - 1e-7  # alphas are clamped below 1 so that log(1 - alpha) stays finite


def _check(values: Tensor, ray_indices: Tensor | None, who: str) -> None:
    if ray_indices is None:
        return
    if values.ndim != 1 or ray_indices.shape != values.shape:
        raise ValueError(f"{who}: packed inputs need values [M] and ray_indices [M], got "
                         f"{tuple(values.shape)} and {tuple(ray_indices.shape)}")


def exclusive_sum(x: Tensor, ray_indices: Tensor | None = None) -> Tensor:
    """``sum_{j < i}`` of ``x`` within each ray: ``[..., S]`` padded or ``[M]`` packed -> same shape.

    Packed sums are accumulated in float64 (so long batches lose no precision) and cast back.
    """
    _check(x, ray_indices, "exclusive_sum")
    if ray_indices is None:
        return torch.cumsum(x, dim=-1) - x
    if x.numel() == 0:
        return x
    c = torch.cumsum(x.double(), dim=0)
    excl = c - x.double()
    first = torch.ones_like(ray_indices, dtype=torch.bool)
    first[1:] = ray_indices[1:] != ray_indices[:-1]
    start = torch.cummax(torch.where(first, torch.arange(x.numel(), device=x.device), 0), dim=0).values
    return (excl - excl[start]).to(x.dtype)


def render_transmittance_from_tau(tau: Tensor, ray_indices: Tensor | None = None) -> Tensor:
    """``T_i = exp(-sum_{j < i} tau_j)`` from optical thicknesses ``tau = sigma * dt`` (same shape)."""
    return torch.exp(-exclusive_sum(tau, ray_indices))


def render_transmittance_from_alpha(alphas: Tensor, ray_indices: Tensor | None = None) -> Tensor:
    """``T_i = prod_{j < i} (1 - alpha_j)``; ``[..., S]`` or packed ``[M]`` -> same shape."""
    return render_transmittance_from_tau(-torch.log1p(-alphas.clamp(0.0, ALPHA_MAX)), ray_indices)


def render_weight_from_alpha(alphas: Tensor, ray_indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Weights ``w_i = T_i alpha_i`` and transmittances ``T_i``, both shaped like ``alphas``."""
    trans = render_transmittance_from_alpha(alphas, ray_indices)
    return trans * alphas, trans


def render_weight_from_density(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor,
                               ray_indices: Tensor | None = None,
                               backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """Weights, transmittances and alphas from densities on intervals ``[t_start, t_end)``.

    All inputs share one shape (``[..., S]`` padded or ``[M]`` packed); returns ``(w, T, alpha)``.
    ``backend``: ``"auto"`` uses the fused C++ kernel with its hand-written backward
    (:mod:`gridfield.fast.render`; differentiable once, in ``sigmas``) on CPU float32 when the
    intervals need no gradient; ``"fast"`` / ``"reference"`` force one.
    """
    ok = (t_starts.shape == t_ends.shape == sigmas.shape and not t_starts.requires_grad
          and not t_ends.requires_grad and (ray_indices is None or ray_indices.dtype == torch.long))
    mod = fast.module(backend, t_starts, t_ends, sigmas, ray_indices, applies=ok,
                      why="needs one shape, intervals without gradients, long ray_indices")
    if mod is not None:
        return fast.weights_from_density(mod, t_starts, t_ends, sigmas, ray_indices)
    tau = sigmas * (t_ends - t_starts)
    trans = render_transmittance_from_tau(tau, ray_indices)
    alphas = 1.0 - torch.exp(-tau)
    return trans * alphas, trans, alphas


def accumulate_along_rays(weights: Tensor, values: Tensor | None = None,
                          ray_indices: Tensor | None = None, n_rays: int | None = None) -> Tensor:
    """``sum_i w_i v_i`` per ray.

    Padded: ``weights [R, S]``, ``values [R, S, C]`` (or None: sum of weights) -> ``[R, C]``
    (``[R, 1]`` for None). Packed: ``weights [M]``, ``values [M, C]``, ``ray_indices [M]``,
    ``n_rays`` -> ``[n_rays, C]``. Differentiable in ``weights`` and ``values``.
    """
    src = weights[..., None] if values is None else weights[..., None] * values
    if ray_indices is None:
        return src.sum(dim=-2)
    _check(weights, ray_indices, "accumulate_along_rays")
    if n_rays is None:
        raise ValueError("accumulate_along_rays: packed inputs need n_rays")
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def distortion_loss(weights: Tensor, s_starts: Tensor, s_ends: Tensor, ray_indices: Tensor | None = None,
                    n_rays: int | None = None) -> Tensor:
    """Mip-NeRF 360's distortion loss per ray (Barron et al. 2022, eq. 15), in O(samples):
    ``sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (s1_i - s0_i)`` with midpoints ``m = (s0 + s1) / 2``.

    It is small when a ray's weight sits in one short interval and large when it is spread along the ray
    (floaters, fog). Samples must be sorted front to back within each ray (the marcher's order), which turns
    the double sum into ``2 sum_i w_i (m_i W_i - M_i)`` with the exclusive sums ``W_i = sum_{j<i} w_j`` and
    ``M_i = sum_{j<i} w_j m_j``. Padded ``[R, S]`` -> ``[R]``; packed ``[M]`` with ``ray_indices`` and
    ``n_rays`` -> ``[n_rays]``. Differentiable in ``weights`` (and the distances).
    """
    _check(weights, ray_indices, "distortion_loss")
    mid = 0.5 * (s_starts + s_ends)
    inner = 2 * weights * (mid * exclusive_sum(weights, ray_indices) - exclusive_sum(weights * mid, ray_indices))
    per_sample = inner + weights.square() * (s_ends - s_starts) / 3
    if ray_indices is None:
        return per_sample.sum(dim=-1)
    if n_rays is None:
        raise ValueError("distortion_loss: packed inputs need n_rays")
    return accumulate_along_rays(per_sample, None, ray_indices, n_rays)[:, 0]


def pack(mask: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """Padded ``[R, S]`` tensors -> packed ``[M]``: ``(ray_indices, *values[mask])`` (row-major order)."""
    ray_indices = torch.nonzero(mask)[:, 0]
    return (ray_indices, *(v[mask] for v in values))
