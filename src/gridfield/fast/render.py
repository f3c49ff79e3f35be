"""Fast paths of the NeRF renderer (C++ ``csrc/render.cpp``, compiled on first use): packed ray marching
against the occupancy grid, volume-rendering weights with a hand-written backward, and the colour MLP in
row chunks (:func:`gridfield.fields.radiance.chunked_mlp`). The radiance field's grids use the fused grid
kernel of :mod:`gridfield.fast.grid_encode` (their own forward).

Each function has the signature of its plain-PyTorch reference in :mod:`gridfield.render` and is chosen
there with ``backend="auto" | "fast" | "reference"``; call those, not these. CPU float32 only (on other
devices or dtypes ``"auto"`` uses the reference, ``"fast"`` raises).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gridfield.fast._build import want_fast

NAME, SOURCES = "gridfield_render", ("render.cpp",)


def _applies(*tensors: Tensor) -> tuple[bool, str]:
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu":
            return False, f"no {t.device.type} kernel (CPU only)"
        if t.is_floating_point() and t.dtype != torch.float32:
            return False, f"float32 only, got {t.dtype}"
    return True, ""


def module(backend: str, *tensors: Tensor, applies: bool = True, why: str = ""):
    """The compiled module when ``backend`` asks for the fast path and it applies to ``tensors`` (CPU,
    float32) and to the caller's own condition ``applies`` (``why`` says why not), else None."""
    ok, why_dev = _applies(*tensors)
    return want_fast(backend, NAME, SOURCES, ok and applies, why_dev or why)


#: marching-space codes of the C++ kernel
CONTRACTION_CODES = {"none": 0, "l2": 1, "linf": 2}


def march(mod, origins: Tensor, dirs: Tensor, t_start: Tensor, t_stop: Tensor, offset: Tensor, n_steps: int,
          step: float, occupancy, contraction: str = "none", radius: float = 1.0,
          max_samples: int | None = None) -> tuple[Tensor, ...]:
    """Packed ``(ray_indices, t_starts, t_ends)``, and with ``max_samples`` also the steps each ray considered
    (int64 ``[N]``): see :func:`gridfield.render.marching.march_rays`. ``offset [N]`` is added to ``t_start``
    first (the stratified offsets, zeros otherwise). With a ``contraction``, ``t_start``, ``t_stop`` and ``step``
    are warped distances and the intervals world ones."""
    if occupancy is None:
        binary, aabb, res = torch.empty(0, dtype=torch.bool), torch.zeros(6), 0
    else:
        binary, aabb, res = occupancy.binary.reshape(-1), occupancy.aabb, occupancy.resolution
    f = lambda t: t.detach().contiguous().float()
    out = mod.march(f(origins), f(dirs), f(t_start), f(t_stop), f(offset), int(n_steps), float(step),
                    binary.contiguous(), aabb, int(res), CONTRACTION_CODES[contraction], float(radius),
                    int(max_samples or 0))
    return tuple(out if max_samples else out[:3])


class _Weights(torch.autograd.Function):
    """``(w, T, alpha)`` from ``sigmas``; differentiable in ``sigmas`` (once)."""

    @staticmethod
    def forward(ctx, sigmas, t_starts, t_ends, ray_indices, row, mod):
        w, trans, alpha = mod.weights_forward(sigmas, t_starts, t_ends, ray_indices, row)
        ctx.save_for_backward(sigmas, t_starts, t_ends, w, trans, ray_indices)
        ctx.row, ctx.mod = row, mod
        return w, trans, alpha

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_w, g_t, g_a):
        sigmas, t_starts, t_ends, w, trans, ray_indices = ctx.saved_tensors
        e = torch.empty(0)
        c = lambda g: e if g is None else g.contiguous()
        g = ctx.mod.weights_backward(c(g_w), c(g_t), c(g_a), sigmas, t_starts, t_ends, w, trans, ray_indices,
                                     ctx.row)
        return g, None, None, None, None, None


def weights_from_density(mod, t_starts: Tensor, t_ends: Tensor, sigmas: Tensor,
                         ray_indices: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(w, T, alpha)`` shaped like ``sigmas``: see :func:`gridfield.render.volrend.render_weight_from_density`.
    Differentiable in ``sigmas`` only (the caller uses the reference when the intervals need gradients)."""
    shape = sigmas.shape
    row = 0 if ray_indices is not None else (int(shape[-1]) if sigmas.ndim else 1)
    ri = torch.empty(0, dtype=torch.long) if ray_indices is None else ray_indices.contiguous()
    f = lambda t: t.detach().reshape(-1).contiguous()
    s = sigmas.reshape(-1).contiguous()
    w, trans, alpha = _Weights.apply(s, f(t_starts), f(t_ends), ri, row, mod)
    return w.view(shape), trans.view(shape), alpha.view(shape)
