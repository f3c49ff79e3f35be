"""Dense n-linear grid (DVGO / Plenoxels style), 1D/2D/3D, one or several resolutions."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from gridfield.fast import grid_encode as fe
from gridfield.fast._build import check_backend
from gridfield.functional.interp import corner_offsets, nlinear_weights, scale_to_grid
from gridfield.grids.base import Grid, SeparableLevel, Support, check_points


class DenseGrid(Grid):
    """Dense grids at one or several resolutions, n-linear interpolation, levels concatenated.

    Level ``l`` is a lattice of ``resolutions[l]`` nodes per axis spanning ``[-1, 1]`` with nodes on
    the boundary (``grid_sample(align_corners=True)``); points outside are clamped to the border.
    All levels live in one table ``features`` ``[sum_l R_l**d, F]`` (level offsets in ``offsets``);
    within a level the row of node ``(i_0, .., i_{d-1})`` is ``sum_j i_j R**j`` (axis 0 fastest, so a
    level reshaped to ``[R]*d + [F]`` and permuted is exactly ``grid_sample``'s input layout).

    forward: ``[N, d]`` -> ``[N, len(resolutions) * F]``; differentiable in ``x`` and ``features`` (twice).
    backend: ``"auto"`` (fused C++ kernel on CPU float32/float64 when it builds, else the plain PyTorch
    evaluation of :meth:`support`), ``"fast"`` (force; raises ``FastPathUnavailable``) or ``"reference"``;
    a plain attribute, not saved in checkpoints; ``$GRIDFIELD_FAST=0`` forces the reference.
    """

    def __init__(
        self,
        dim: int,
        resolutions: int | Sequence[int] = 64,
        features_per_level: int = 2,
        init_scale: float = 1e-4,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_backend(backend)
        self.backend = backend
        self._spec = None
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

    def forward(self, x: Tensor) -> Tensor:
        """Features ``[N, len(resolutions) * F]``: the fused kernel (:mod:`gridfield.fast.grid_encode`)
        where ``backend`` allows (not for subclasses that redefine :meth:`support`), else
        :meth:`reference_forward`."""
        check_points(x, self.in_dim, "DenseGrid")
        own = type(self).support is DenseGrid.support
        mod = fe.encoder_for(getattr(self, "backend", "auto"), self.features, x, own, "a subclass redefines support")
        if mod is None:
            return self.reference_forward(x)
        return fe.grid_encode(mod, self.features, x, self.encode_spec())

    def reference_forward(self, x: Tensor) -> Tensor:
        """Plain evaluation of the formalism from :meth:`support` (the base-class reference)."""
        return super().forward(x)

    def encode_spec(self):
        """Per-level constants for the fused kernel (:class:`gridfield.fast.grid_encode.EncodeSpec`)."""
        if getattr(self, "_spec", None) is None:
            d = self.in_dim
            self._spec = fe.make_spec(
                fe.DENSE, d, self.offsets, [r**d for r in self.resolutions], [False] * len(self.resolutions),
                [[r**j for j in range(d)] for r in self.resolutions], [0.5 * (r - 1) for r in self.resolutions],
                [float(r - 1) for r in self.resolutions])
        return self._spec

    def separable_levels(self) -> list[SeparableLevel] | None:
        """Every level is a tensor product of 1D hats (exact); ``None`` for a subclass that redefines
        :meth:`support` (its structure is unknown)."""
        if type(self).support is not DenseGrid.support:
            return None
        return [SeparableLevel((off, off + r**self.in_dim), partial(_axis_hats, r))
                for off, r in zip(self.offsets, self.resolutions)]

    def level_table(self, level: int) -> Tensor:
        """Level ``level`` as a ``grid_sample`` input ``[1, F, *[R]*d]`` (a view; differentiable)."""
        r, off = self.resolutions[level], self.offsets[level]
        t = self.features[off : off + r**self.in_dim].reshape(*([r] * self.in_dim), -1)
        return t.permute(self.in_dim, *range(self.in_dim)).unsqueeze(0)


def _axis_hats(r: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """1D vertices and hat weights ``[M, 2]`` of a level of resolution ``r`` (``align_corners=True``,
    clamped to the border), and ``r``."""
    u = np.clip((t + 1) * 0.5 * (r - 1), 0, r - 1)
    base = np.clip(np.floor(u), 0, r - 2)
    frac = u - base
    base = base.astype(np.int64)
    return np.stack([base, base + 1], 1), np.stack([1 - frac, frac], 1), r
