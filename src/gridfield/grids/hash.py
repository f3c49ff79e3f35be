"""Multi-resolution hash grid (Instant-NGP), behaving like tiny-cuda-nn's Grid encoding.

Matches tcnn's ``{"otype": "Grid", "type": "Hash", "hash": "CoherentPrime", "interpolation":
"Linear"}`` (see :mod:`gridfield.functional.hashing` for the index arithmetic and its citations).
Our domain is ``[-1, 1]^d``; tcnn's is ``[0, 1]^d``, so points are mapped by ``x01 = (x + 1) / 2``.

Layout, as tcnn's flat parameter buffer: one table ``features`` ``[total_rows, F]``; level ``l`` owns
rows ``offsets[l] : offsets[l + 1]`` (``level_sizes[l]`` rows, its ``hashmap_size``), and
``features.reshape(-1)`` is tcnn's ``params`` vector (``row * F + feature``). Output is level-major,
``[N, n_levels * F]`` (level ``l`` in columns ``l*F : (l+1)*F``), like tcnn's encoding output.

Border behaviour (reproduced, not fixed): with ``pos = x01 * scale + 0.5`` the upper corner of the
cell is ``floor(pos) + 1``, which equals ``resolution`` (one past the last vertex) wherever
``pos >= ceil(scale)``, e.g. on the last half cell ``x01 >= 1 - 0.5 / scale`` when ``scale`` is an
integer (every level of the default ``per_level_scale = 2`` configuration). On dense levels that
vertex aliases: along axis 0 it reads vertex ``(0, i_1 + 1, ...)``; along the last axis it reads a
row ``>= resolution**d``, i.e. one of the alignment padding rows or, after ``% hashmap_size``, the
start of the level. On hashed levels it is simply hashed. Points outside ``[-1, 1]`` are not
clamped either: their uint32 coordinates wrap exactly as in tcnn.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from gridfield.fast import grid_encode as fe
from gridfield.fast._build import check_backend
from gridfield.functional.hashing import (
    axis_factors,
    cell_corner_rows,
    cell_corner_weights,
    grid_resolution,
    grid_scale,
    is_hashed,
    level_params,
    pos_fract,
)
from gridfield.grids.base import Grid, SeparableLevel, Support, check_points


class HashGrid(Grid):
    """Instant-NGP multi-resolution hash encoding, tcnn-identical indexing; dims 1, 2, 3.

    Args:
        dim: input dimension (1, 2 or 3).
        n_levels: number of levels ``L``.
        features_per_level: ``F`` (tcnn's CUDA kernels allow 1, 2, 4, 8; any ``F >= 1`` works here).
        log2_hashmap_size: ``T``; at most ``2**T`` rows per level (``1 <= T <= 31``).
        base_resolution: ``N_min``; level 0 has ``scale = N_min - 1``.
        per_level_scale: growth factor ``b`` per level (tcnn default 2.0).
        finest_resolution: alternative to ``per_level_scale``: ``b = exp(log(N_max / N_min) / (L - 1))``
            as in the Instant-NGP paper (eq. 3).
        init_scale: features start ``uniform(-init_scale, init_scale)`` (tcnn: ``1e-4``).
        backend: ``"auto"`` (fused C++ kernel on CPU float32/float64 when it builds, else the plain
            PyTorch forward), ``"fast"`` (force; raises ``FastPathUnavailable``) or ``"reference"``. A plain
            attribute (``grid.backend``), not saved in checkpoints; ``$GRIDFIELD_FAST=0`` forces the reference.

    forward: ``[N, dim]`` in ``[-1, 1]^dim`` -> ``[N, n_levels * F]``; differentiable in ``x`` (almost
    everywhere: the field is continuous, its gradient jumps across cell faces) and in ``features``.
    Example: ``HashGrid(3, n_levels=16, log2_hashmap_size=19, finest_resolution=2048)(x)``.
    """

    def __init__(
        self,
        dim: int,
        n_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float | None = None,
        finest_resolution: float | None = None,
        init_scale: float = 1e-4,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_backend(backend)
        self.backend = backend
        self._spec = None
        _check_config(dim, n_levels, features_per_level, log2_hashmap_size, base_resolution)
        if finest_resolution is not None:
            if per_level_scale is not None:
                raise ValueError("HashGrid: give per_level_scale or finest_resolution, not both")
            if finest_resolution < base_resolution:
                raise ValueError(f"HashGrid: finest_resolution {finest_resolution} < base {base_resolution}")
            per_level_scale = (
                math.exp(math.log(finest_resolution / base_resolution) / (n_levels - 1)) if n_levels > 1 else 1.0
            )
        per_level_scale = 2.0 if per_level_scale is None else float(per_level_scale)
        if not per_level_scale > 0 or not math.isfinite(per_level_scale):
            raise ValueError(f"HashGrid: per_level_scale must be a positive number, got {per_level_scale}")
        self.in_dim = dim
        self.n_levels = n_levels
        self.features_per_level = features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = base_resolution
        self.per_level_scale = per_level_scale
        self.out_dim = n_levels * features_per_level
        self.scales = [grid_scale(lv, per_level_scale, base_resolution) for lv in range(n_levels)]
        self.resolutions = [grid_resolution(s) for s in self.scales]
        self.level_sizes = [level_params(r, dim, log2_hashmap_size) for r in self.resolutions]
        self.offsets = [sum(self.level_sizes[:lv]) for lv in range(n_levels + 1)]
        self._hashed = [is_hashed(r, dim, m) for r, m in zip(self.resolutions, self.level_sizes)]
        factors = [axis_factors(r, dim, h) for r, h in zip(self.resolutions, self._hashed)]
        # Small per-level constants for the vectorised index computation (not saved in checkpoints).
        self.register_buffer("_factors", torch.tensor(factors, dtype=torch.int64), persistent=False)
        self.register_buffer("_is_hashed", torch.tensor(self._hashed), persistent=False)
        self.register_buffer("_sizes", torch.tensor(self.level_sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("_offsets", torch.tensor(self.offsets[:-1], dtype=torch.int64), persistent=False)
        self.features = nn.Parameter(
            torch.empty(self.offsets[-1], features_per_level).uniform_(-init_scale, init_scale)
        )

    def hashed_levels(self) -> list[int]:
        """Levels whose vertices are hashed (``resolution**dim > hashmap_size``); the others are dense."""
        return [lv for lv, h in enumerate(self._hashed) if h]

    def all_levels_support(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Global rows ``[N, L, 2**d]`` of ``features`` and n-linear weights ``[N, L, 2**d]``, all levels.

        x: ``[N, d]`` in ``[-1, 1]^d``, mapped to tcnn's domain by ``x01 = (x + 1) / 2``. Corner ``k``
        has offset ``(k >> j) & 1`` along axis ``j``. Weights are differentiable in ``x``; when no gradient
        wrt ``x`` is being recorded, the C++ kernel (:func:`gridfield.fast.grid_encode.grid_support`, same
        values) computes both where the backend allows.
        """
        check_points(x, self.in_dim, "HashGrid")
        if not (x.requires_grad and torch.is_grad_enabled()):  # no weight gradients wanted: the C++ support
            mod = fe.encoder_for(getattr(self, "backend", "auto"), self.features, x)
            if mod is not None:
                return fe.grid_support(mod, x, self.encode_spec(), self.features.shape[0])
        return self.reference_support(x)

    def reference_support(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`all_levels_support` in plain PyTorch (vectorised over ``[N, L, 2**d]``), differentiable in ``x``."""
        x01 = (x + 1) * 0.5
        cell, frac = pos_fract(x01, torch.tensor(self.scales, dtype=x.dtype, device=x.device))
        rows = cell_corner_rows(cell, self._factors, self._is_hashed, self._sizes)
        return rows + self._offsets.view(1, -1, 1), cell_corner_weights(frac)

    def support(self, x: Tensor) -> list[Support]:
        """Per level: ``Support(index [N, 2**d], weight [N, 2**d], channels=slice(l*F, (l+1)*F))``."""
        return self._terms(*self.all_levels_support(x))

    def _terms(self, index: Tensor, weight: Tensor) -> list[Support]:
        f = self.features_per_level
        return [Support(index[:, lv], weight[:, lv], slice(lv * f, (lv + 1) * f)) for lv in range(self.n_levels)]

    def forward(self, x: Tensor) -> Tensor:
        """Features ``[N, n_levels * F]``; the fused kernel (:mod:`gridfield.fast.grid_encode`) where
        ``backend`` allows, else :meth:`eager_forward`; both tested against :meth:`reference_forward`."""
        check_points(x, self.in_dim, "HashGrid")
        own = type(self).all_levels_support is HashGrid.all_levels_support
        mod = fe.encoder_for(getattr(self, "backend", "auto"), self.features, x, own,
                             "a subclass redefines all_levels_support")
        if mod is None:
            return self.eager_forward(x)
        return fe.grid_encode(mod, self.features, x, self.encode_spec())

    def encode_spec(self):
        """Per-level constants for the fused kernel (:class:`gridfield.fast.grid_encode.EncodeSpec`)."""
        if getattr(self, "_spec", None) is None:
            factors = [axis_factors(r, self.in_dim, h) for r, h in zip(self.resolutions, self._hashed)]
            self._spec = fe.make_spec(fe.HASH, self.in_dim, self.offsets[:-1], self.level_sizes, self._hashed,
                                      factors, self.scales, [0.0] * self.n_levels)
        return self._spec

    def eager_forward(self, x: Tensor) -> Tensor:
        """Plain-PyTorch forward: one ``index_select`` over all levels (2x faster than advanced
        indexing on CPU, backward by ``index_add``); tested against :meth:`reference_forward`."""
        index, weight = self._plain_support(x)
        rows = self.features.index_select(0, index.reshape(-1)).view(*index.shape, -1)  # [N, L, K, F]
        out = torch.einsum("nlk,nlkf->nlf", weight.to(self.features.dtype), rows)
        return out.reshape(x.shape[0], self.out_dim)

    def reference_forward(self, x: Tensor) -> Tensor:
        """Plain evaluation of the formalism from the plain-PyTorch support (the base-class reference)."""
        check_points(x, self.in_dim, "HashGrid")
        return self.features_from_support(self._terms(*self._plain_support(x)), x.shape[0])

    def _plain_support(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`reference_support`, or a subclass's own :meth:`all_levels_support` where it has one."""
        if type(self).all_levels_support is HashGrid.all_levels_support:
            return self.reference_support(x)
        return self.all_levels_support(x)

    def separable_levels(self) -> list[SeparableLevel] | None:
        """Every level as the tensor product of 1D hats of its un-hashed lattice (tcnn's mapping): exact
        for dense levels up to the border aliasing, collisions ignored for hashed ones; ``None`` for a
        subclass that redefines the support."""
        if (type(self).support is not HashGrid.support
                or type(self).all_levels_support is not HashGrid.all_levels_support):
            return None
        return [SeparableLevel((self.offsets[lv], self.offsets[lv + 1]), partial(_axis_hats, self.scales[lv]))
                for lv in range(self.n_levels)]

    def extra_repr(self) -> str:
        return (
            f"dim={self.in_dim}, n_levels={self.n_levels}, F={self.features_per_level}, "
            f"T={self.log2_hashmap_size}, base={self.base_resolution}, "
            f"per_level_scale={self.per_level_scale:.6g}, rows={self.offsets[-1]}, "
            f"hashed_levels={self.hashed_levels()}, backend={getattr(self, 'backend', 'auto')!r}"
        )


def _axis_hats(scale: float, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """1D vertices and hat weights ``[M, 2]`` of a level (tcnn's float32 ``pos = x01 * scale + 0.5``),
    vertices counted from the lowest cell touched, and their number."""
    pos = ((t.astype(np.float32) + 1) * np.float32(0.5)) * np.float32(scale) + np.float32(0.5)
    cell = np.floor(pos)
    frac = (pos - cell).astype(np.float64)
    cell = cell.astype(np.int64)
    cols = np.stack([cell, cell + 1], 1) - cell.min()
    return cols, np.stack([1 - frac, frac], 1), int(cols.max()) + 1


def _check_config(dim: int, n_levels: int, f: int, t: int, base: int) -> None:
    """Raise a clear ``ValueError`` for an impossible configuration."""
    if dim not in (1, 2, 3):
        raise ValueError(f"HashGrid supports dim 1, 2 or 3, got {dim}")
    if not isinstance(n_levels, int) or n_levels < 1:
        raise ValueError(f"HashGrid: n_levels must be an integer >= 1, got {n_levels}")
    if not isinstance(f, int) or f < 1:
        raise ValueError(f"HashGrid: features_per_level must be an integer >= 1, got {f}")
    if not isinstance(t, int) or not 1 <= t <= 31:
        raise ValueError(f"HashGrid: log2_hashmap_size must be an integer in [1, 31], got {t}")
    if not isinstance(base, int) or base < 1:
        raise ValueError(f"HashGrid: base_resolution must be an integer >= 1, got {base}")
