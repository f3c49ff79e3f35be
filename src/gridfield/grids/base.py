"""The common interface of every grid model: ``g(x) = sum_{k in U(x)} phi(x, k) w_k``.

A grid stores its node features ``w`` in one or more tables (parameters named in
``grid_param_names``, each ``[rows, F]``) and answers two questions about a batch of points:

* ``support(x)``: the activated nodes ``U(x)`` and kernel weights ``phi(x, k)``, as a list of
  :class:`Support` terms (one per level or plane);
* ``forward(x)``: the features ``[N, C]`` (``C = out_dim``).

For grids that are linear in their features (``aggregate == "sum"``) the features are exactly
``sum`` over terms of ``scale * sum_k weight[:, k] * table[index[:, k]]`` written into each term's
``channels``. For product factorizations (K-Planes, ``aggregate == "product"``) the features are the
product of the per-term interpolations, and ``scale`` holds the product of the *other* factors, so
that ``scale * weight`` is still the exact Jacobian of the features with respect to the term's table
rows. The GTK toolkit relies only on this interface (plus the optional :meth:`Grid.separable_levels`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Support:
    """One term of the formalism (one level, one plane).

    index:    ``[N, K]`` long, rows of the table ``param`` activated by each point (``U(x)``).
    weight:   ``[N, K]`` kernel weights ``phi(x, k)``; differentiable in ``x`` and in kernel params.
    channels: the columns of ``forward(x)`` that this term writes.
    param:    name of the grid-feature table (a parameter of the grid) that ``index`` refers to.
    scale:    ``[N, F]`` per-channel factor (product aggregation), ``None`` meaning 1.
    """

    index: Tensor
    weight: Tensor
    channels: slice
    param: str = "features"
    scale: Tensor | None = None


@dataclass(frozen=True)
class SeparableLevel:
    """One level whose support is a tensor product of the same 1D hat interpolation along every axis.

    rows: ``(start, stop)`` table rows of the level.
    axis: ``t [M]`` (1D coordinates in ``[-1, 1]``, NumPy) -> ``(cols [M, 2], weights [M, 2], vertices)``:
          the two vertices along the axis (0-based, ``< vertices``) and their hat weights per coordinate.
    """

    rows: tuple[int, int]
    axis: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, int]]


def interpolate(table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """``sum_k weight[:, k] * table[index[:, k]]``: ``[rows, F]``, ``[N, K]``, ``[N, K]`` -> ``[N, F]``.

    Plain-PyTorch reference gather; differentiable in ``table`` and ``weight``.
    """
    return torch.einsum("nk,nkf->nf", weight, table[index])


def check_points(x: Tensor, dim: int, who: str) -> None:
    """Raise a clear ``ValueError`` unless ``x`` is a floating ``[N, dim]`` tensor."""
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[-1] != dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who} expects points of shape [N, {dim}], got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{who} expects floating-point points, got dtype {x.dtype}")


class Grid(nn.Module):
    """Base class of the grid models (see the module docstring for the contract).

    Subclasses set ``in_dim``, ``out_dim`` and ``aggregate`` and implement :meth:`support`.
    ``forward`` defaults to the plain-PyTorch evaluation of the support; fast paths override it and are
    tested against this reference.
    """

    grid_param_names: tuple[str, ...] = ("features",)
    in_dim: int
    out_dim: int
    aggregate: Literal["sum", "product"] = "sum"

    def support(self, x: Tensor) -> list[Support]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Features ``[N, out_dim]`` at points ``x`` ``[N, in_dim]`` in ``[-1, 1]^d``."""
        check_points(x, self.in_dim, type(self).__name__)
        return self.features_from_support(self.support(x), x.shape[0])

    def features_from_support(self, terms: list[Support], n: int) -> Tensor:
        """Reference evaluation of the formalism from its support terms (differentiable).

        Terms writing the same channels are summed (or multiplied, for ``aggregate == "product"``);
        the channel blocks must tile ``[0, out_dim)``.
        """
        blocks: dict[tuple[int, int], Tensor] = {}
        for t in terms:
            val = interpolate(getattr(self, t.param), t.index, t.weight)
            key = (t.channels.start, t.channels.stop)
            if key not in blocks:
                blocks[key] = val if t.scale is None or self.aggregate == "product" else val * t.scale
            elif self.aggregate == "product":
                blocks[key] = blocks[key] * val
            else:
                blocks[key] = blocks[key] + (val if t.scale is None else val * t.scale)
        keys = sorted(blocks)
        if keys[0][0] != 0 or keys[-1][1] != self.out_dim or any(
            a[1] != b[0] for a, b in zip(keys, keys[1:])
        ):
            raise RuntimeError(f"{type(self).__name__}: support channels {keys} do not tile {self.out_dim}")
        return torch.cat([blocks[k] for k in keys], dim=1) if len(keys) > 1 else blocks[keys[0]]

    def separable_levels(self) -> list[SeparableLevel] | None:
        """The levels' tensor-product (separable) structure, or ``None`` when the grid has none (the default).

        Level ``l``'s weight of a point ``x`` on node ``(i_0, .., i_{d-1})`` is ``prod_j a_l(x_j)[i_j]``
        with ``a_l`` its :attr:`SeparableLevel.axis`; used by the GTK's lattice preconditioner.
        """
        return None

    def grid_parameters(self) -> dict[str, nn.Parameter]:
        """The node-feature tables ``w`` (the parameters the paper's GTK differentiates)."""
        return {name: getattr(self, name) for name in self.grid_param_names}

    def kernel_parameters(self) -> dict[str, nn.Parameter]:
        """Every other parameter of the grid (e.g. a learned kernel); empty for fixed kernels."""
        grid = set(self.grid_param_names)
        return {n: p for n, p in self.named_parameters() if n.split(".")[0] not in grid}

    @property
    def linear_in_features(self) -> bool:
        """True when ``g`` is linear in ``w`` and ``phi`` does not depend on ``w`` (Theorem 2 exact)."""
        return self.aggregate == "sum"
