"""n-linear interpolation helpers (pure functions; differentiable in the fractional positions)."""

from __future__ import annotations

import torch
from torch import Tensor


def corner_offsets(dim: int, device: torch.device | str | None = None) -> Tensor:
    """Binary offsets of the ``2**dim`` corners of a unit cell.

    Returns ``[2**dim, dim]`` long; corner ``k`` has offset ``(k >> j) & 1`` along dimension ``j``
    (dimension 0 varies fastest, as in tiny-cuda-nn).
    """
    k = torch.arange(2**dim, device=device)
    return torch.stack([(k >> j) & 1 for j in range(dim)], dim=-1)


def nlinear_weights(frac: Tensor) -> Tensor:
    """Hat-function weights of the cell corners.

    frac: ``[N, d]`` fractional position inside the cell, in ``[0, 1]``.
    Returns ``[N, 2**d]``, corner order of :func:`corner_offsets`; the weights sum to 1.
    Differentiable in ``frac`` (twice, for eikonal losses).
    """
    d = frac.shape[-1]
    bits = corner_offsets(d, frac.device).to(frac.dtype)  # [K, d]
    f = frac.unsqueeze(-2)  # [N, 1, d]
    return (bits * f + (1 - bits) * (1 - f)).prod(dim=-1)


def scale_to_grid(x: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Map ``x`` in ``[-1, 1]^d`` to the cell of an ``align_corners=True`` lattice of ``resolution`` nodes.

    Node ``i`` sits at ``-1 + 2 i / (resolution - 1)``, as in ``grid_sample(align_corners=True)``.
    Points outside are clamped to the border (``padding_mode="border"``).
    Returns ``(base [N, d] long, frac [N, d])`` with ``base`` in ``[0, resolution - 2]``.
    ``frac`` is differentiable in ``x``.
    """
    u = ((x + 1) * (0.5 * (resolution - 1))).clamp(0, resolution - 1)
    base = u.detach().floor().clamp(0, resolution - 2)
    return base.long(), u - base
