"""MulFAGrid (Multiplicative Fourier Adaptive Grid): a grid layout with a learned kernel network.

The layout (dense 2D/3D, one or several resolutions, factor planes, or the levels of a hash grid)
supplies ``U(x)`` and the vertex positions; a :class:`~gridfield.grids.mulfa_kernel.MulFAKernel` per
support term supplies ``phi_raw(x, v)``; the two forms normalize it over the ``K`` activated vertices:

* ``"paper"``:  ``phi = raw / S``, ``S = sum_v' raw(x, v')``. ``S`` can vanish or change sign, so it is
  replaced by ``sign(S) * max(|S|, paper_eps)`` (``sign(0) = +1``): weights stay finite (at most
  ``|raw| / paper_eps``) and no gradient flows through a clamped ``S``. Vertices off a shared face keep
  non-zero weight, so the field is **discontinuous across cell faces**.
* ``"stable"``: ``phi = s * h / sum_v' s' h'`` with ``s = softplus(raw) + floor`` and ``h`` the
  layout's n-linear hat weight: positive, sums to 1 (the denominator is at least ``floor``, because the
  hat weights sum to 1), continuous across faces (off-face vertices have ``h = 0``), and exactly
  n-linear interpolation when the raw kernel does not depend on the vertex. ``raw`` is clamped to
  ``[-1e4, 1e4]`` before the softplus so adversarial parameters cannot overflow.

Grid features live in the layout's table(s) (``features``; ``grid_parameters()``); kernel parameters
are ``kernels.<term>.*`` (``kernel_parameters()``), trained with their own learning rate.

``forward`` has two implementations with the same result: the plain-PyTorch reference (the support
path, ``backend="reference"``) and a fused C++/OpenMP kernel (:mod:`gridfield.fast.mulfa`, compiled on
first use), chosen by ``backend="auto"`` where it applies (CPU, float32/64, no gradient wrt ``x``, no
``torch.func`` transform; ``$GRIDFIELD_FAST=0`` forces the reference). ``support()`` is always the
reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gridfield.fast import mulfa as fm
from gridfield.fast._build import check_backend
from gridfield.functional.hashing import axis_factors
from gridfield.grids.base import Grid, Support, check_points, interpolate
from gridfield.grids.dense import DenseGrid
from gridfield.grids.hash import HashGrid
from gridfield.grids.mulfa_kernel import MulFAKernel
from gridfield.grids.planes import PlaneGrid

FORMS = ("paper", "stable")
#: Per-form output-layer initialisation (docs/mulfagrid.md, "Parameters, initialisation").
FORM_DEFAULTS: dict[str, dict[str, float]] = {
    "stable": {"out_scale": 1.0, "out_bias": 0.0},
    "paper": {"out_scale": 1.0, "out_bias": 1.0},
}


@dataclass(frozen=True)
class Lattice:
    """One support term's lattice, in grid units (the kernel network's coordinates).

    axes: the input axes it spans; resolution: nodes per axis; offset: its first table row;
    half_cells: ``Omega = theta * half_cells`` and ``v_hat = v / half_cells - 1`` for a vertex ``v`` in
    grid units. Dense and plane lattices (``hash_scale is None``) map ``u = (x + 1) half_cells``, clamped
    to ``[0, R - 1]``; a hash level maps tcnn's ``u = (x + 1) / 2 * scale + 0.5`` unclamped (``HashGrid``)
    and finds its rows by ``factors`` (primes when ``hashed``, else strides) modulo ``size``.
    """

    axes: tuple[int, ...]
    resolution: int
    offset: int
    half_cells: float
    hash_scale: float | None = None
    hashed: bool = False
    size: int = 0
    factors: tuple[int, ...] = ()


def lattice_terms(layout: Grid) -> list[Lattice]:
    """The :class:`Lattice` of each term of ``layout.support`` (same order).

    Supported layouts: :class:`DenseGrid`, ``PlaneGrid`` and :class:`HashGrid`; anything else raises
    ``ValueError``.
    """
    if isinstance(layout, DenseGrid):
        axes = tuple(range(layout.in_dim))
        return [Lattice(axes, r, off, 0.5 * (r - 1)) for r, off in zip(layout.resolutions, layout.offsets)]
    if isinstance(layout, PlaneGrid):
        return [Lattice(tuple(a), r, layout.offsets[lv][p], 0.5 * (r - 1))
                for lv, r in enumerate(layout.resolutions) for p, a in enumerate(layout.axes)]
    if isinstance(layout, HashGrid) and type(layout).support is HashGrid.support:
        axes = tuple(range(layout.in_dim))
        return [Lattice(axes, r, layout.offsets[lv], 0.5 * s, s, h, m, tuple(axis_factors(r, layout.in_dim, h)))
                for lv, (r, s, h, m) in enumerate(zip(layout.resolutions, layout.scales, layout._hashed,
                                                      layout.level_sizes))]
    raise ValueError(f"MulFAGrid cannot wrap a {type(layout).__name__} layout; "
                     "use a DenseGrid, PlaneGrid or HashGrid (or layout='dense' / 'planes' / 'hash')")


def term_channels(layout: Grid) -> list[tuple[int, int]]:
    """``(start, stop)`` output channels of each term of ``layout.support`` (same order as :func:`lattice_terms`)."""
    f = layout.features_per_level
    if isinstance(layout, HashGrid):
        return [(lv * f, (lv + 1) * f) for lv in range(layout.n_levels)]
    per_level = 1 if isinstance(layout, DenseGrid) else len(layout.axes)
    return [(lv * f, (lv + 1) * f) for lv in range(len(layout.resolutions)) for _ in range(per_level)]


LAYOUTS = ("dense", "planes", "hash")


def make_layout(layout: str | Grid, dim: int, resolutions: int | Sequence[int] | None, features_per_level: int,
                **kwargs: Any) -> Grid:
    """A layout instance from a name (``"dense"``, ``"planes"``, ``"hash"``) or the instance itself.

    ``resolutions`` (default 64) sets the dense and plane lattices; a hash layout takes ``HashGrid``'s
    own arguments (``n_levels``, ``log2_hashmap_size``, ``base_resolution``, ``finest_resolution`` ...)
    in ``kwargs`` and refuses ``resolutions``.
    """
    if isinstance(layout, Grid):
        return layout
    if layout == "hash":
        if resolutions is not None:
            raise ValueError("MulFAGrid(layout='hash') takes n_levels / base_resolution / finest_resolution, "
                             "not resolutions")
        return HashGrid(dim, features_per_level=features_per_level, backend="reference", **kwargs)
    resolutions = 64 if resolutions is None else resolutions
    if layout == "dense":
        return DenseGrid(dim, resolutions, features_per_level, **kwargs)
    if layout == "planes":
        return PlaneGrid(dim, resolutions, features_per_level, backend="reference", **kwargs)
    raise ValueError(f"unknown MulFAGrid layout {layout!r}; choose one of {list(LAYOUTS)} (or pass a Grid)")


class MulFAGrid(Grid):
    """A layout's ``U(x)`` and features with learned, normalized MFN kernel weights.

    Args:
        dim: input dimension (2 or 3; dense also accepts 1).
        resolutions, features_per_level: passed to the layout (``resolutions`` default 64; a hash layout
            refuses it and takes ``n_levels``, ``log2_hashmap_size``, ... in ``layout_kwargs``).
        layout: ``"dense"``, ``"planes"``, ``"hash"`` or a ``DenseGrid`` / ``PlaneGrid`` / ``HashGrid``
            instance (its table becomes this grid's ``features``; see :class:`Lattice` for each mapping).
        form: ``"stable"`` (default) or ``"paper"`` (see the module docstring).
        frequencies, width, layers, filter_scale, out_scale, out_bias: the kernel network
            (:class:`MulFAKernel`); ``out_scale``/``out_bias`` default per form (``FORM_DEFAULTS``).
        paper_eps: the paper form's denominator clamp; floor: the stable form's kernel floor.
        share_kernel: one kernel network for every term (each keeps its own ``theta``, ``psi``).
        backend: ``"auto"`` (fused C++ kernel where it applies, else the reference), ``"fast"`` (raise
            ``FastPathUnavailable`` where it cannot be used) or ``"reference"`` (plain PyTorch).
        layout_kwargs: extra layout arguments (``init_scale`` for dense, ``aggregate``/``init`` for planes,
            the ``HashGrid`` arguments for hash).

    forward: ``[N, dim]`` -> ``[N, out_dim]`` (the layout's), differentiable in ``x``, the features
    and the kernel parameters. Example: ``MulFAGrid(2, [64, 128], 4, form="stable")(x)`` -> ``[N, 8]``.
    """

    def __init__(self, dim: int, resolutions: int | Sequence[int] | None = None, features_per_level: int = 2,
                 layout: str | Grid = "dense", form: Literal["paper", "stable"] = "stable",
                 frequencies: int = 4, width: int = 16, layers: int = 3, filter_scale: float = 0.5,
                 out_scale: float | None = None, out_bias: float | None = None,
                 paper_eps: float = 1e-3, floor: float = 1e-6, share_kernel: bool = False,
                 backend: str = "auto", **layout_kwargs: Any) -> None:
        super().__init__()
        check_backend(backend)  # validates the name; "auto" is resolved per call
        if form not in FORMS:
            raise ValueError(f"unknown MulFAGrid form {form!r}; choose one of {FORMS}")
        if paper_eps <= 0 or floor <= 0:
            raise ValueError(f"MulFAGrid needs paper_eps > 0 and floor > 0, got {paper_eps}, {floor}")
        lay = make_layout(layout, dim, resolutions, features_per_level, **layout_kwargs)
        if lay.in_dim != dim:
            raise ValueError(f"MulFAGrid(dim={dim}) got a layout with in_dim {lay.in_dim}")
        self.lattices = lattice_terms(lay)
        self.term_channels = term_channels(lay)
        self.backend = backend
        object.__setattr__(self, "layout", lay)  # not a submodule: its tables are re-registered below
        self.grid_param_names = tuple(lay.grid_param_names)
        for name in self.grid_param_names:
            setattr(self, name, getattr(lay, name))
        self.in_dim, self.out_dim, self.aggregate = dim, lay.out_dim, lay.aggregate
        self.form, self.paper_eps, self.floor = form, paper_eps, floor
        kw = dict(FORM_DEFAULTS[form])
        kw.update({k: v for k, v in (("out_scale", out_scale), ("out_bias", out_bias)) if v is not None})
        self.share_kernel = bool(share_kernel)
        kernels = [MulFAKernel(len(t.axes), 2 * t.half_cells + 1, frequencies, width, layers, filter_scale, **kw)
                   for t in self.lattices]
        if self.share_kernel:  # one network (every term has as many axes); each keeps its own filters
            for k in kernels[1:]:
                k.linears, k.out = kernels[0].linears, kernels[0].out
        self.kernels = nn.ModuleList(kernels)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``[N, out_dim]`` at ``x`` ``[N, dim]``: the fused kernel or the reference (``backend``)."""
        check_points(x, self.in_dim, type(self).__name__)
        spec, params = self.fast_spec(), self.kernel_tensors()
        ext = fm.resolve(getattr(self, "backend", "auto"), spec, x, self.features, params)
        if ext is None:
            return self.features_from_support(self.support(x), x.shape[0])
        return fm.mulfa_forward(ext, spec, x, self.features, params)

    def fast_spec(self) -> fm.MulFASpec:
        """The plain numbers of this grid for the fused kernel (:class:`gridfield.fast.mulfa.MulFASpec`)."""
        terms = tuple(fm.MulFATerm(t.axes, t.resolution, t.offset, k.frequencies, len(k.linears), ch,
                                   t.hash_scale, t.hashed, t.size, t.factors)
                      for t, k, ch in zip(self.lattices, self.kernels, self.term_channels))
        return fm.MulFASpec(terms, self.form, float(self.paper_eps), float(self.floor), self.aggregate, self.out_dim)

    def kernel_tensors(self) -> list[Tensor]:
        """Every term's kernel parameters in the fused kernel's order, term after term:
        ``W0, b0, .., W_{M-1}, b_{M-1}, theta, psi, w_out, b_out`` (:attr:`MulFATerm.n_params` each)."""
        out: list[Tensor] = []
        for k in self.kernels:
            for lin in k.linears:
                out += [lin.weight, lin.bias]
            out += [k.filter_freq, k.filter_phase, k.out.weight, k.out.bias]
        return out

    def normalize(self, raw: Tensor, hat: Tensor) -> Tensor:
        """Kernel weights ``[N, K]`` from raw kernels and hat weights ``[N, K]`` (this grid's form)."""
        if self.form == "paper":
            return raw / safe_denominator(raw.sum(-1, keepdim=True), self.paper_eps)
        s = (F.softplus(raw.clamp(-1e4, 1e4)) + self.floor) * hat
        return s / s.sum(-1, keepdim=True)

    def raw_kernels(self, x: Tensor, index: Tensor, term: int) -> Tensor:
        """Raw kernel ``[N, K]`` of support term ``term`` at points ``x`` and its activated rows ``index``."""
        lat = self.lattices[term]
        xs = x[:, list(lat.axes)]
        a = len(lat.axes)
        if lat.hash_scale is not None:  # tcnn's mapping (HashGrid.all_levels_support); rows may be hashed
            u = (xs + 1) * 0.5 * lat.hash_scale + 0.5  # grid units, [N, a]
            cell = torch.floor(u.detach())
            bits = torch.tensor([[(k >> j) & 1 for j in range(a)] for k in range(2**a)], dtype=x.dtype,
                                device=x.device)
            coords = cell.unsqueeze(1) + bits  # [N, K, a], corner order of the support
        else:
            r = lat.resolution
            u = ((xs + 1) * lat.half_cells).clamp(0, r - 1)  # grid units, [N, a]
            local = index - lat.offset
            coords = torch.stack([torch.div(local, r**j, rounding_mode="floor") % r for j in range(a)], -1)
        v_hat = coords.to(x.dtype) * (1.0 / lat.half_cells) - 1  # [N, K, a]
        return self.kernels[term](u, v_hat)

    def support(self, x: Tensor) -> list[Support]:
        """The layout's terms with ``weight`` replaced by the normalized kernel (``[N, K]`` each).

        Weights are differentiable in ``x`` and the kernel parameters. For a product layout ``scale``
        is recomputed from the new weights (product of the other factors of the same resolution).
        """
        check_points(x, self.in_dim, type(self).__name__)
        terms = self.layout.support(x)
        if len(terms) != len(self.lattices) or any(t.index.shape[1] == 0 for t in terms):
            raise RuntimeError(f"MulFAGrid: layout returned {len(terms)} terms, expected {len(self.lattices)} "
                               "with at least one vertex each")
        out = [replace(t, weight=self.normalize(self.raw_kernels(x, t.index, i), t.weight), scale=None)
               for i, t in enumerate(terms)]
        return _product_scales(self, out) if self.aggregate == "product" else out


def safe_denominator(s: Tensor, eps: float) -> Tensor:
    """``sign(s) * max(|s|, eps)`` with ``sign(0) = +1``: never zero, sign preserved."""
    sign = torch.where(s < 0, -1.0, 1.0).to(s.dtype)
    return torch.where(s.abs() < eps, sign * eps, s)


def _product_scales(grid: Grid, terms: list[Support]) -> list[Support]:
    """Set each term's ``scale`` to the product of the other terms' values on the same channels."""
    vals = [interpolate(getattr(grid, t.param), t.index, t.weight) for t in terms]
    out = []
    for i, t in enumerate(terms):
        others = [v for j, (s, v) in enumerate(zip(terms, vals)) if j != i and s.channels == t.channels]
        scale = others[0]
        for v in others[1:]:
            scale = scale * v
        out.append(replace(t, scale=scale))
    return out
