"""Radiance fields from any 3D grid of the zoo: density ``sigma(x)`` and colour ``c(x, d)``.

World points inside the scene box ``aabb`` are mapped to the grids' ``[-1, 1]^3``. Two layouts:

* **split** (DVGO / Plenoxels style, default for dense grids): a density grid (1 channel, or a small
  head when it has more) and a separate appearance grid;
* **shared** (Instant-NGP style, ``color_grid=None``): one grid, a small MLP giving density and
  ``geo_features`` appearance features.

Appearance ``sh``: the appearance features are spherical-harmonic coefficients (``3 (deg + 1)^2``
channels, or a linear map to them), ``rgb = sigmoid(SH(d) . c)``: no MLP. Appearance ``mlp``:
features and an SH encoding of the view direction go through a tiny MLP, ``rgb = sigmoid(MLP)``.

Density: ``sigma = softplus(raw + shift) * sigma_scale`` (DVGO's shifted softplus, ``density_activation
= "softplus"``) or ``sigma = trunc_exp(raw + shift)`` (Instant-NGP's truncated exponential, ``"trunc_exp"``;
``sigma_scale`` unused), ``shift`` chosen so that an untrained field has opacity ``alpha_init`` per
marching step. Everything is differentiable in the grid and head parameters.

Background (``background="sh"``, for unbounded and forward-facing captures): a learned environment map
seen along the view direction, ``sigmoid(SH_3(d) . b / C0)`` with ``b [3, 16]`` (degree-3 spherical
harmonics scaled so that ``b[:, 0]`` is the mean logit; :meth:`init_background` starts it at a colour),
that the renderer composites behind what the rays leave untouched; ``"none"``: the renderer's fixed
colour. Its coefficients train with the grid features (an environment map is a grid over directions).

Example::

    field = RadianceField(make_grid("dense", 3, resolutions=[128], features_per_level=1),
                          make_grid("dense", 3, resolutions=[128], features_per_level=12),
                          aabb=torch.tensor([-1.5] * 3 + [1.5] * 3), appearance="mlp", step=0.01)
    sigma = field.density(x)            # [N]
    rgb = field.color(x, dirs)          # [N, 3]
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gridfield.fast import render as fast_render
from gridfield.fast._build import check_backend
from gridfield.fields.decoders import MLPDecoder
from gridfield.functional.activations import trunc_exp
from gridfield.functional.sh import C0, sh_basis, sh_to_rgb
from gridfield.grids.base import Grid
from gridfield.grids.dense import DenseGrid


class RadianceField(nn.Module):
    """``x [N, 3]`` world -> ``sigma [N]``; ``(x, d [N, 3] unit)`` -> ``rgb [N, 3]`` in ``(0, 1)``."""

    def __init__(self, density_grid: Grid, color_grid: Grid | None, aabb: Tensor,
                 appearance: Literal["sh", "mlp"] = "mlp", sh_degree: int = 2, view_degree: int = 2,
                 width: int = 64, hidden_layers: int = 2, geo_features: int = 15,
                 alpha_init: float = 1e-4, step: float = 0.01, sigma_scale: float | None = None,
                 density_activation: Literal["softplus", "trunc_exp"] = "softplus", backend: str = "auto",
                 background: Literal["none", "sh"] = "none") -> None:
        super().__init__()
        if appearance not in ("sh", "mlp"):
            raise ValueError(f"appearance must be 'sh' or 'mlp', got {appearance!r}")
        if density_activation not in ("softplus", "trunc_exp"):
            raise ValueError(f"density_activation must be 'softplus' or 'trunc_exp', got {density_activation!r}")
        if background not in ("none", "sh"):
            raise ValueError(f"background must be 'none' or 'sh', got {background!r}")
        if color_grid is None and appearance == "sh" and density_grid.out_dim < 1:
            raise ValueError("shared layout with SH appearance needs grid features")
        self.density_grid, self.color_grid = density_grid, color_grid
        self.appearance, self.sh_degree, self.view_degree = appearance, sh_degree, view_degree
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        n_sh = 3 * (sh_degree + 1) ** 2
        shared = color_grid is None
        app_dim = (n_sh if appearance == "sh" else geo_features) if shared else color_grid.out_dim
        d_out = 1 + (app_dim if shared else 0)
        self.density_head = (None if density_grid.out_dim == 1 and not shared else
                             MLPDecoder(density_grid.out_dim, d_out, width=width, hidden_layers=1))
        if appearance == "sh":
            self.color_head = None if app_dim == n_sh else nn.Linear(app_dim, n_sh)
        else:
            self.color_head = MLPDecoder(app_dim + (view_degree + 1) ** 2, 3, width, hidden_layers)
        scale = sigma_scale if sigma_scale is not None else 1.0 / step
        self.sigma_scale, self.density_activation = float(scale), density_activation
        sigma0 = -math.log1p(-alpha_init) / step  # density of opacity alpha_init per step
        self.shift = float(math.log(sigma0) if density_activation == "trunc_exp"
                           else math.log(math.expm1(sigma0 / scale)))
        self.backend = backend  # fast paths; not part of the state dict
        self.background_sh = nn.Parameter(torch.zeros(3, 16)) if background == "sh" else None

    @property
    def backend(self) -> str:
        """The fast paths of this field and its grids: ``"auto"`` (fast where it applies), ``"fast"``
        (raise where it cannot be used) or ``"reference"`` (plain PyTorch). Setting it sets the grids'
        too; it survives :func:`refit_dense`."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        check_backend(value)
        self._backend = value
        for grid in (self.density_grid, self.color_grid):
            if grid is not None and hasattr(grid, "backend"):
                grid.backend = value

    # -- coordinates and parameters ------------------------------------------------------------
    def to_unit(self, x: Tensor) -> Tensor:
        """World ``[N, 3]`` -> grid coordinates ``[-1, 1]^3`` (points outside the box are clamped)."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        return ((x - lo) / (hi - lo) * 2 - 1).clamp(-1, 1)

    def grid_parameters(self) -> dict[str, nn.Parameter]:
        """Grid-feature tables of both grids (and the background's coefficients), named as in
        ``named_parameters()``."""
        out = {f"density_grid.{k}": v for k, v in self.density_grid.grid_parameters().items()}
        if self.color_grid is not None:
            out |= {f"color_grid.{k}": v for k, v in self.color_grid.grid_parameters().items()}
        if self.background_sh is not None:
            out["background_sh"] = self.background_sh
        return out

    def other_parameters(self) -> dict[str, nn.Parameter]:
        """Heads and kernel parameters (everything not in :meth:`grid_parameters`)."""
        grid = self.grid_parameters()
        return {k: v for k, v in self.named_parameters() if k not in grid}

    # -- evaluation ---------------------------------------------------------------------------
    def _density_and_geo(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.density_grid(self.to_unit(x))
        if self.density_head is not None:
            none = h.new_empty(h.shape[0], 0)
            if check_backend(self.backend) != "reference" and chunked_mlp_applies(self.density_head, h, none):
                h = chunked_mlp(self.density_head, h, none, backend=self.backend)
            else:
                h = self.density_head(h)
        if self.density_activation == "trunc_exp":
            sigma = trunc_exp(h[:, 0] + self.shift)
        else:
            sigma = F.softplus(h[:, 0] + self.shift) * self.sigma_scale
        return sigma, (h[:, 1:] if self.color_grid is None else None)

    def density(self, x: Tensor) -> Tensor:
        """Volume density ``[N]`` (>= 0, world units^-1) at world points ``[N, 3]``."""
        return self._density_and_geo(x)[0]

    def color(self, x: Tensor, dirs: Tensor, geo: Tensor | None = None) -> Tensor:
        """Radiance ``[N, 3]`` at world points ``x [N, 3]`` seen along unit directions ``dirs [N, 3]``.

        ``geo``: the shared layout's appearance features from :meth:`density_and_geo` (recomputed if None).
        """
        if self.color_grid is not None:
            feat = self.color_grid(self.to_unit(x))
        else:
            feat = geo if geo is not None else self._density_and_geo(x)[1]
        if self.appearance == "sh":
            coefs = feat if self.color_head is None else self.color_head(feat)
            return sh_to_rgb(coefs.view(-1, 3, (self.sh_degree + 1) ** 2), sh_basis(dirs, self.sh_degree))
        view = sh_basis(dirs, self.view_degree)
        if check_backend(self.backend) != "reference" and chunked_mlp_applies(self.color_head, feat, view):
            return torch.sigmoid(chunked_mlp(self.color_head, feat, view, backend=self.backend))
        return torch.sigmoid(self.color_head(torch.cat([feat, view], -1)))

    def density_and_geo(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``sigma [N]`` and (shared layout only) appearance features ``[N, geo]`` in one grid pass."""
        return self._density_and_geo(x)

    @torch.no_grad()
    def init_background(self, rgb: Tensor) -> None:
        """Start the learned background at the constant colour ``rgb [3]`` in ``(0, 1)`` (``gridfield nerf``: the
        median of the training images' border pixels): otherwise the field learns to explain that colour by
        fog before the background does. No-op without a learned background."""
        if self.background_sh is not None:
            self.background_sh.zero_()
            self.background_sh[:, 0] = torch.logit(rgb.clamp(0.02, 0.98).to(self.background_sh))

    def background_color(self, dirs: Tensor) -> Tensor | None:
        """The learned background ``[N, 3]`` along unit view directions ``dirs [N, 3]`` (None without one)."""
        if self.background_sh is None:
            return None
        return torch.sigmoid(sh_basis(dirs, 3) @ self.background_sh.t() / C0)


# -- colour MLP fast path (cache-sized row chunks: C++ loop when built, else plain PyTorch) -----------
MLP_CHUNK = 4096  # rows per chunk: the activations of one chunk (4096 x 64 floats = 1 MB) stay in cache


def chunked_mlp_applies(head, feat: Tensor, extra: Tensor) -> bool:
    """Whether :func:`chunked_mlp` can evaluate ``head`` (an :class:`MLPDecoder`) on these inputs: CPU
    float32, ``extra`` without gradient, no ``torch.func`` transform active."""
    return (isinstance(head, MLPDecoder) and feat.device.type == "cpu" and feat.dtype == torch.float32
            and extra.dtype == torch.float32 and not extra.requires_grad and feat.ndim == 2
            and feat.shape[0] > 0 and not torch._C._are_functorch_transforms_active())


def chunked_mlp(head: MLPDecoder, feat: Tensor, extra: Tensor, chunk: int | None = None,
                backend: str = "auto") -> Tensor:
    """``head(cat([feat, extra], -1))`` evaluated ``chunk`` rows at a time (forward and backward), so
    each layer's activations are reused from cache instead of streamed through memory, and the input
    gradient is computed for ``feat``'s columns only. Same values as the reference up to float32
    summation order; differentiable once in ``feat`` and the head's parameters (``extra``: constant).
    ``chunk`` defaults to :data:`MLP_CHUNK` rows. ``backend``: the C++ chunk loop where it is built
    (``"auto"``), forced (``"fast"``), or the plain-PyTorch chunk loop (``"reference"``)."""
    chunk = chunk or MLP_CHUNK
    params = [t for layer in head if isinstance(layer, nn.Linear) for t in (layer.weight, layer.bias)]
    if not torch.is_grad_enabled() or not (feat.requires_grad or any(p.requires_grad for p in params)):
        return _mlp_inference(feat, extra, chunk, backend, params)
    return _ChunkedMLP.apply(feat, extra, chunk, backend, *params)


def _mlp_input(feat: Tensor, extra: Tensor) -> Tensor:
    """``cat([feat, extra], -1)`` (no copy when ``extra`` has no columns, as for the density head)."""
    return feat.contiguous() if extra.shape[1] == 0 else torch.cat([feat, extra], -1)


def _mlp_inference(feat: Tensor, extra: Tensor, chunk: int, backend: str, params: list[Tensor]) -> Tensor:
    """:func:`chunked_mlp` without a graph (evaluation): the output alone; no layer's activations for all rows
    are kept (the C++ loop keeps each chunk's in per-thread scratch)."""
    x = _mlp_input(feat, extra).detach()
    ws, bs = [w.detach() for w in params[0::2]], [b.detach() for b in params[1::2]]
    return _mlp_forward(fast_render.module(backend, x), x, ws, bs, chunk, keep_hidden=False)[-1]


def _mlp_forward(mod, x: Tensor, ws, bs, chunk: int, keep_hidden: bool) -> list[Tensor]:
    """Every layer's activations (ReLU applied to the hidden ones) with ``keep_hidden``, else ``[output]``:
    the C++ ``mlp_forward`` of ``mod``, or its plain-PyTorch twin (a chunk loop) when ``mod`` is None."""
    if mod is not None:
        return mod.mlp_forward(x, list(ws), list(bs), chunk, keep_hidden)
    m, last = x.shape[0], len(ws) - 1
    acts = [x.new_empty(m, w.shape[0]) for w in ws[:last]] if keep_hidden else []
    out = x.new_empty(m, ws[last].shape[0])
    for s in range(0, m, chunk):
        h = x[s : s + chunk]
        for i, (w, b) in enumerate(zip(ws, bs)):
            dst = out[s : s + chunk] if i == last else acts[i][s : s + chunk] if keep_hidden else None
            h = torch.addmm(b, h, w.t(), out=dst)
            if i < last:
                h.clamp_min_(0)
    return acts + [out]


class _ChunkedMLP(torch.autograd.Function):
    """Forward and backward in row chunks: through the C++ kernel (:func:`gridfield.fast.render.module`:
    one parallel region per pass, whole chunks per thread) when it is built, else a Python loop."""

    @staticmethod
    def forward(ctx, feat, extra, chunk, backend, *params):
        x = _mlp_input(feat, extra).detach()  # may be feat itself: the kernels' GEMMs write into their outputs
        ws, bs = params[0::2], params[1::2]
        ctx.mod = mod = fast_render.module(backend, x)
        ctx.chunk, ctx.n_feat, ctx.n_layers = chunk, feat.shape[1], len(ws)
        acts = _mlp_forward(mod, x, ws, bs, chunk, keep_hidden=True)
        ctx.save_for_backward(x, *ws, *acts[:-1])
        return acts[-1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        n = ctx.n_layers
        x, ws, hidden = saved[0], saved[1 : 1 + n], saved[1 + n :]
        grad = grad.contiguous()
        need_feat = ctx.needs_input_grad[0]
        if ctx.mod is not None:
            out = ctx.mod.mlp_backward(grad, x, list(ws), list(hidden), ctx.n_feat, need_feat, ctx.chunk)
            return (out[-1] if need_feat else None, None, None, None, *out[:-1])
        gws = [torch.zeros_like(w) for w in ws]
        gbs = [w.new_zeros(w.shape[0]) for w in ws]
        m, chunk = x.shape[0], ctx.chunk
        gfeat = x.new_empty(m, ctx.n_feat) if need_feat else None
        w_feat = ws[0][:, : ctx.n_feat]
        for s in range(0, m, chunk):
            g = grad[s : s + chunk]
            for i in range(n - 1, -1, -1):
                inp = x[s : s + chunk] if i == 0 else hidden[i - 1][s : s + chunk]
                gws[i].addmm_(g.t(), inp)
                gbs[i] += g.sum(0)
                if i > 0:
                    g = torch.ops.aten.threshold_backward(g @ ws[i], inp, 0.0)  # ReLU's backward
            if need_feat:
                torch.mm(g, w_feat, out=gfeat[s : s + chunk])
        grads = [t for pair in zip(gws, gbs) for t in pair]
        return (gfeat, None, None, None, *grads)


# -- coarse-to-fine refitting and total variation ----------------------------------------------------
def dense_resolution(grid: Grid | None) -> int | None:
    """The resolution of a single-level 3D ``DenseGrid`` (the grids that can be refitted), else None."""
    if type(grid) is DenseGrid and len(grid.resolutions) == 1 and grid.in_dim == 3:
        return grid.resolutions[0]
    return None


@torch.no_grad()
def _resample_dense(grid: Grid, old_aabb: Tensor, new_aabb: Tensor, res: int, chunk: int = 1 << 18) -> Grid:
    """A new single-level ``DenseGrid`` of ``res^3`` nodes spanning ``new_aabb``, holding ``grid``'s
    (trilinear) values at its node positions (``grid`` spans ``old_aabb``)."""
    new = DenseGrid(3, resolutions=[res], features_per_level=grid.features_per_level,
                    backend=getattr(grid, "backend", "auto"))  # the field's choice survives the refit
    ar = torch.linspace(0, 1, res, device=old_aabb.device)
    k2, k1, k0 = torch.meshgrid(ar, ar, ar, indexing="ij")  # node row = i0 + i1 R + i2 R^2
    u = torch.stack([k0, k1, k2], -1).reshape(-1, 3)
    world = new_aabb[:3] + u * (new_aabb[3:] - new_aabb[:3])
    unit = ((world - old_aabb[:3]) / (old_aabb[3:] - old_aabb[:3]) * 2 - 1).clamp(-1, 1)
    vals = torch.cat([grid(unit[s : s + chunk]) for s in range(0, unit.shape[0], chunk)])
    new.features.data = vals.to(grid.features.dtype).contiguous()
    return new.to(grid.features.device)


def refit_dense(field: RadianceField, aabb: Tensor, density_res: int, color_res: int | None = None) -> bool:
    """Coarse-to-fine step: resample the field's dense grids onto ``aabb`` at the given resolutions.

    Returns False (and changes nothing) unless the density grid (and the colour grid, when there is
    one) are single-level dense grids. The new parameters need a new optimizer.
    """
    if dense_resolution(field.density_grid) is None:
        return False
    if field.color_grid is not None and dense_resolution(field.color_grid) is None:
        return False
    aabb = torch.as_tensor(aabb, dtype=torch.float32, device=field.aabb.device)
    field.density_grid = _resample_dense(field.density_grid, field.aabb, aabb, density_res)
    if field.color_grid is not None:
        field.color_grid = _resample_dense(field.color_grid, field.aabb, aabb, color_res or density_res)
    field.aabb.copy_(aabb)
    return True


def total_variation(grid: Grid) -> Tensor:
    """Mean squared difference between neighbouring nodes of a single-level dense 3D grid (a scalar,
    differentiable); zero for other grids."""
    r = dense_resolution(grid)
    if r is None:
        return grid.grid_parameters()[next(iter(grid.grid_parameters()))].sum() * 0.0
    t = grid.features.view(r, r, r, -1)
    return ((t[1:] - t[:-1]).square().mean() + (t[:, 1:] - t[:, :-1]).square().mean()
            + (t[:, :, 1:] - t[:, :, :-1]).square().mean())
