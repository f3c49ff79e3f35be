"""Dense n-linear grid (DVGO / Plenoxels style), 1D/2D/3D, one or several resolutions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gridfield.functional.interp import corner_offsets, nlinear_weights, scale_to_grid
from gridfield.grids.base import Grid, Support


class DenseGrid(Grid):
    """Dense grids at one or several resolutions, n-linear interpolation, levels concatenated.

    Level ``l`` is a lattice of ``resolutions[l]`` nodes per axis spanning ``[-1, 1]`` with nodes on
    the boundary (``grid_sample(align_corners=True)``); points outside are clamped to the border.
    All levels live in one table ``features`` ``[sum_l R_l**d, F]`` (level offsets in ``offsets``);
    within a level the row of node ``(i_0, .., i_{d-1})`` is ``sum_j i_j R**j`` (axis 0 fastest, so a
    level reshaped to ``[R]*d + [F]`` and permuted is exactly ``grid_sample``'s input layout).

    forward: ``[N, d]`` -> ``[N, len(resolutions) * F]``; differentiable in ``x`` and ``features``.
    """

    def __init__(
        self,
        dim: int,
        resolutions: int | Sequence[int] = 64,
        features_per_level: int = 2,
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if dim not in (1, 2, 3):
            raise ValueError(f"DenseGrid supports dim 1, 2 or 3, got {dim}")
        res = [resolutions] if isinstance(resolutions, int) else list(resolutions)
        if not res or min(res) < 2:
            raise ValueError(f"DenseGrid needs resolutions >= 2, got {res}")
        self.in_dim = dim
        self.resolutions = res
        self.features_per_level = features_per_level
        self.out_dim = len(res) * features_per_level
        sizes = [r**dim for r in res]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.features = nn.Parameter(
            torch.empty(sum(sizes), features_per_level).uniform_(-init_scale, init_scale)
        )

    def support(self, x: Tensor) -> list[Support]:
        """Per level: ``index [N, 2**d]`` rows of ``features`` and hat weights ``[N, 2**d]``."""
        corners = corner_offsets(self.in_dim, x.device)  # [K, d]
        terms = []
        f = self.features_per_level
        for level, (r, off) in enumerate(zip(self.resolutions, self.offsets)):
            base, frac = scale_to_grid(x, r)
            strides = torch.tensor([r**j for j in range(self.in_dim)], device=x.device)
            index = ((base.unsqueeze(1) + corners) * strides).sum(-1) + off  # [N, K]
            terms.append(Support(index, nlinear_weights(frac), slice(level * f, (level + 1) * f)))
        return terms

    def level_table(self, level: int) -> Tensor:
        """Level ``level`` as a ``grid_sample`` input ``[1, F, *[R]*d]`` (a view; differentiable)."""
        r, off = self.resolutions[level], self.offsets[level]
        t = self.features[off : off + r**self.in_dim].reshape(*([r] * self.in_dim), -1)
        return t.permute(self.in_dim, *range(self.in_dim)).unsqueeze(0)
