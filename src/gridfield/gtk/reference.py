"""Plain reference GTK: dense Jacobians from ``torch.func.jacrev`` (small ``n`` only; tests use it)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from gridfield.gtk._checks import check_budget


def reference_jacobian(field: nn.Module, x: Tensor, names: list[str], dtype: torch.dtype = torch.float64,
                       max_bytes: int | None = None) -> np.ndarray:
    """Dense Jacobian of all outputs wrt the parameters ``names``: ``[N, m * P]`` (outputs stacked).

    Differentiates the whole batch function ``params -> field(x)`` (``[N, m]``) with ``jacrev``; its
    memory (:func:`reference_bytes`: the ``(N m)^2`` identity basis jacrev vmaps over, one backward
    pass per basis row, and the ``N m P`` Jacobian) is checked first.
    """
    params = {k: v.detach() for k, v in field.named_parameters() if k in names}
    n_par = sum(v.numel() for v in params.values())
    m = field.out_dim
    n = x.shape[0]
    check_budget(f"the dense reference Jacobian (jacrev over {n} x {m} outputs and {n_par} parameters, "
                 f"with its {n * m} x {n * m} basis)", reference_bytes(field, x, names, dtype), max_bytes,
                 "use implementation='structured' or 'operator', which never build a dense Jacobian")

    def call(prm: dict) -> Tensor:
        return functional_call(field, prm, (x,))

    jac = jacrev(call)(params)
    mats = [jac[k].reshape(x.shape[0], m, -1) for k in names]
    return torch.cat(mats, 2).detach().to(dtype).reshape(x.shape[0], -1).numpy()


def _per_point_width(field: nn.Module, x: Tensor, names: list[str]) -> int:
    """Values per point that one backward pass holds on its way from the outputs to the parameters
    ``names``, twice (the gradients and their temporaries): the support of a grid (``K`` corners times
    the channels of each term) and the outputs of the modules the gradient passes through (the field
    and its decoder when only grid features are differentiated; every module otherwise, e.g.
    MulFAGrid's kernel networks for ``wrt="all"``). Measured on two points."""
    probe = x[:2]
    grid = getattr(field, "grid", None)
    grid_only = grid is not None and hasattr(field, "grid_parameters") and set(names) <= set(field.grid_parameters())
    decoder = getattr(field, "decoder", None)
    watched = [field] + (list(decoder.modules()) if decoder is not None else []) if grid_only else list(field.modules())
    widths: list[int] = []

    def hook(_module, _inputs, output):
        if isinstance(output, Tensor) and output.ndim >= 1 and output.shape[0] == probe.shape[0]:
            widths.append(output[0].numel())

    with torch.no_grad():
        handles = [mod.register_forward_hook(hook) for mod in watched]
        try:
            field(probe)
        finally:
            for h in handles:
                h.remove()
        terms = grid.support(probe) if grid is not None and hasattr(grid, "support") else []
    support = sum(t.index.shape[1] * max(1, len(range(grid.out_dim)[t.channels])) for t in terms)
    return 2 * (support + sum(widths))


def reference_bytes(field: nn.Module, x: Tensor, names: list[str], dtype: torch.dtype = torch.float64) -> float:
    """Peak bytes of :func:`reference_jacobian` for the points ``x [N, d]`` (``m`` outputs, ``P`` parameters).

    ``jacrev`` builds the ``(N m) x (N m)`` identity basis of the outputs and vmaps one backward pass
    over its rows; each row's pass holds the gradients of every activation of the batch (``N x S``
    values, ``S``: :func:`_per_point_width`) and of the parameters (``P``). So the vmap phase needs
    ``b (N m) (N m + N S + P)`` bytes (``b``: the parameters' item size); assembling the
    result needs the ``N m P`` Jacobian, its concatenation and the ``dtype`` copy. The peak is the
    larger of the two. Measured on CPU (peak RSS), the estimate is 1.1x to 5x the real peak for dense,
    hash, planes and MulFAGrid fields with identity, linear and MLP decoders (conservative by design);
    at ``N = 200,000``, ``m = 1`` the basis alone is 160 GB.
    """
    params = [p for k, p in field.named_parameters() if k in names]
    n_par = sum(p.numel() for p in params)
    item = max((p.element_size() for p in params), default=4)
    rows = x.shape[0] * field.out_dim
    vmap = item * rows * (rows + x.shape[0] * _per_point_width(field, x, names) + n_par)
    assemble = rows * n_par * (2 * item + torch.empty((), dtype=dtype).element_size())
    return float(max(vmap, assemble))


def reference_kernel(j1: np.ndarray, j2: np.ndarray, out_dim: int) -> np.ndarray:
    """Channel-averaged kernel ``J1 J2^T / m`` from stacked dense Jacobians: ``[N1, N2]``."""
    return j1 @ j2.T / out_dim
