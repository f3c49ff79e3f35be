"""Factorized plane grids: tri-plane (sum, EG3D style) and K-Planes (Hadamard product), 2D and 3D."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import combinations
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gridfield.functional.interp import corner_offsets, nlinear_weights, scale_to_grid
from gridfield.grids.base import Grid, Support, check_points, interpolate

PLANE_NAMES = {2: ("x", "y"), 3: ("xy", "xz", "yz")}
# Uniform init ranges. Product factors must stay away from 0 (the Jacobian of one plane is the
# product of the others); (0.1, 0.5) is K-Planes' range for its spatial planes.
DEFAULT_INIT = {"sum": (-1e-4, 1e-4), "product": (0.1, 0.5)}


class PlaneGrid(Grid):
    """Axis-aligned factor grids at one or several resolutions, aggregated per resolution.

    ``dim == 3``: three 2D planes ``xy, xz, yz`` (axis pairs ``(0, 1), (0, 2), (1, 2)``).
    ``dim == 2``: two 1D line factors ``x, y``. Each factor is an ``align_corners=True`` lattice of
    ``R`` nodes per axis on ``[-1, 1]`` (points outside clamp to the border), interpolated
    (bi)linearly at the point's coordinates on the factor's axes. At one resolution the factor
    features ``[N, F]`` are summed (``aggregate="sum"``: tri-plane) or multiplied elementwise
    (``"product"``: K-Planes); resolutions are concatenated, so the output is ``[N, len(R) * F]``.

    All factors of all resolutions live in one table ``features`` ``[sum_r P * r**(d-1), F]``
    (``P = d`` factors), resolution-major then factor; ``offsets[level][p]`` is the first row of
    factor ``p`` at ``level``. Inside a plane node ``(i_a, i_b)`` is row ``i_a + i_b * r`` (first axis
    fastest), so :meth:`level_planes` is a ``grid_sample`` input without copying. ``axes[p]`` and
    ``plane_names[p]`` name factor ``p`` (e.g. ``(0, 2)``, ``"xz"``).

    backend: ``"auto"`` or ``"fast"`` (default: fused ``F.grid_sample`` on the plane tables, on any
    device) or ``"reference"`` (the support path). Both are differentiable in ``x`` (twice) and ``features``.
    init: uniform range ``(lo, hi)`` of the features; default ``DEFAULT_INIT[aggregate]``.

    Example: ``PlaneGrid(3, [32, 64], features_per_level=8, aggregate="product")(x)`` -> ``[N, 16]``.
    """

    def __init__(
        self,
        dim: int,
        resolutions: int | Sequence[int] = 64,
        features_per_level: int = 16,
        aggregate: Literal["sum", "product"] = "sum",
        init: tuple[float, float] | None = None,
        backend: Literal["auto", "fast", "reference"] = "auto",
    ) -> None:
        super().__init__()
        if dim not in PLANE_NAMES:
            raise ValueError(f"PlaneGrid supports dim 2 (line factors) or 3 (tri-plane), got {dim}")
        res = _int_list(resolutions)
        if not res or min(res) < 2:
            raise ValueError(f"PlaneGrid needs integer resolutions >= 2, got {resolutions}")
        if not isinstance(features_per_level, int) or features_per_level < 1:
            raise ValueError(f"PlaneGrid needs features_per_level >= 1, got {features_per_level}")
        if aggregate not in DEFAULT_INIT:
            raise ValueError(f"PlaneGrid aggregate must be 'sum' or 'product', got {aggregate!r}")
        if backend not in ("auto", "fast", "reference"):
            raise ValueError(f"PlaneGrid backend must be 'auto', 'fast' or 'reference', got {backend!r}")
        lo, hi = DEFAULT_INIT[aggregate] if init is None else init
        if not lo < hi:
            raise ValueError(f"PlaneGrid init must be a range (lo, hi) with lo < hi, got {init}")
        self.in_dim = dim
        self.aggregate = aggregate
        self.backend = backend
        self.resolutions = res
        self.features_per_level = features_per_level
        self.out_dim = len(res) * features_per_level
        self.axes = list(combinations(range(dim), dim - 1))
        self.plane_names = PLANE_NAMES[dim]
        size = [r ** (dim - 1) for r in res]
        starts = [sum(len(self.axes) * s for s in size[:i]) for i in range(len(res))]
        self.offsets = [[st + p * s for p in range(len(self.axes))] for st, s in zip(starts, size)]
        rows = len(self.axes) * sum(size)
        self.features = nn.Parameter(torch.empty(rows, features_per_level).uniform_(lo, hi))

    def _factor_support(self, x: Tensor, level: int, p: int) -> tuple[Tensor, Tensor]:
        """``(index [N, K], weight [N, K])`` of factor ``p`` at ``level`` (``K = 2**(d-1)``)."""
        r, axes = self.resolutions[level], self.axes[p]
        base, frac = scale_to_grid(x[:, list(axes)], r)
        corners = corner_offsets(len(axes), x.device)
        strides = torch.tensor([r**j for j in range(len(axes))], device=x.device)
        index = ((base.unsqueeze(1) + corners) * strides).sum(-1) + self.offsets[level][p]
        return index, nlinear_weights(frac)

    def support(self, x: Tensor) -> list[Support]:
        """One term per (resolution, factor), ``channels = slice(level * F, (level + 1) * F)``.

        ``index``/``weight`` ``[N, 2**(d-1)]``: the factor's corner rows and hat weights (sum to 1).
        For ``"product"``, ``scale`` ``[N, F]`` is the product of the other factors' values at the
        same resolution, so ``scale * weight`` is the exact Jacobian wrt the term's rows.
        Differentiable in ``x`` and ``features`` (through ``weight`` and ``scale``). NaN points raise
        ``ValueError`` here; the ``grid_sample`` forward propagates them as NaN features instead.
        """
        check_points(x, self.in_dim, type(self).__name__)
        if torch.isnan(x).any():  # NaN would become an out-of-range row index
            raise ValueError("PlaneGrid got NaN points")
        f, terms = self.features_per_level, []
        for level in range(len(self.resolutions)):
            chan = slice(level * f, (level + 1) * f)
            parts = [self._factor_support(x, level, p) for p in range(len(self.axes))]
            scales: list[Tensor | None] = [None] * len(parts)
            if self.aggregate == "product":
                vals = [interpolate(self.features, i, w) for i, w in parts]
                scales = [_product([v for q, v in enumerate(vals) if q != p]) for p in range(len(vals))]
            terms += [Support(i, w, chan, scale=s) for (i, w), s in zip(parts, scales)]
        return terms

    def forward(self, x: Tensor) -> Tensor:
        """Features ``[N, len(resolutions) * F]`` at ``x`` ``[N, d]`` in ``[-1, 1]^d``."""
        check_points(x, self.in_dim, type(self).__name__)
        if self.backend == "reference":
            return self.features_from_support(self.support(x), x.shape[0])
        return torch.cat([self._level_grid_sample(x, level) for level in range(len(self.resolutions))], 1)

    def _level_grid_sample(self, x: Tensor, level: int) -> Tensor:
        """All factors of ``level`` in one batched ``grid_sample`` call, aggregated: ``[N, F]``."""
        planes = self.level_planes(level)  # [P, F, H, W]
        coords = [x[:, list(a)] for a in self.axes]
        if self.in_dim == 2:  # lines are 1-row images; the row coordinate is irrelevant
            coords = [torch.cat([c, torch.zeros_like(c)], 1) for c in coords]
        grid = torch.stack(coords, 0).unsqueeze(1)  # [P, 1, N, 2]
        out = F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=True)
        out = out.sum(0) if self.aggregate == "sum" else out.prod(0)  # [F, 1, N]
        return out[:, 0].T

    def level_planes(self, level: int) -> Tensor:
        """Factors of ``level`` as a ``grid_sample`` batch ``[P, F, H, W]`` (a view; differentiable).

        Planes: ``H = W = R``, ``W`` indexed by the first axis of the pair. Lines: ``H = 1, W = R``.
        """
        r, p = self.resolutions[level], len(self.axes)
        rows = self.features[self.offsets[level][0] : self.offsets[level][0] + p * r ** (self.in_dim - 1)]
        h = r if self.in_dim == 3 else 1
        return rows.reshape(p, h, r, -1).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"dim={self.in_dim}, factors={self.plane_names}, resolutions={self.resolutions}, "
                f"F={self.features_per_level}, aggregate={self.aggregate!r}, backend={self.backend!r}, "
                f"rows={self.features.shape[0]}")

    def plane_table(self, level: int, p: int) -> Tensor:
        """Factor ``p`` (see ``plane_names``) of ``level`` as ``[1, F, H, W]`` (a view)."""
        return self.level_planes(level)[p : p + 1]


def _int_list(resolutions: int | Sequence[int]) -> list[int]:
    """``[r]`` or ``list(resolutions)`` as Python ints (numpy integers accepted); ``[]`` if not integers."""
    try:
        return [operator.index(resolutions)]
    except TypeError:
        pass
    try:
        return [operator.index(r) for r in resolutions]
    except TypeError:
        return []


def _product(values: list[Tensor]) -> Tensor:
    """Elementwise product of a non-empty list of equally shaped tensors."""
    out = values[0]
    for v in values[1:]:
        out = out * v
    return out
