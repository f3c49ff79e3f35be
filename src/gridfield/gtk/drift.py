"""Theorem 2, measured: the relative GTK drift ``||G(t) - G(0)||_F / ||G(0)||_F`` during real training."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from dataclasses import field as dc_field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import Tensor, nn

from gridfield.errors import InputError
from gridfield.gtk.engine import gtk


@dataclass
class DriftTrace:
    """``steps [T]``, ``drift [T]`` (relative Frobenius change of G) and training ``loss [T]`` (MSE)."""

    steps: list[int] = dc_field(default_factory=list)
    drift: list[float] = dc_field(default_factory=list)
    loss: list[float] = dc_field(default_factory=list)
    linear_in_grid: bool = False


def _fro(a) -> float:
    return float(spla.norm(a)) if sp.issparse(a) else float(np.linalg.norm(a))


def drift(field: nn.Module, x: Tensor, y: Tensor, steps: int = 200, every: int = 20, lr: float = 1e-2,
          lr_other: float | None = None, train: str = "all", wrt: str = "grid", seed: int = 0,
          in_place: bool = False) -> DriftTrace:
    """Train ``field`` with Adam on ``MSE(field(x), y)`` (full batch) and measure the GTK drift.

    x ``[n, d]``, y ``[n, m]``. train: ``"all"`` (every trainable parameter, as a real run) or
    ``"grid"`` (grid features only). lr / lr_other: for the grid features / the other parameters.
    The GTK (``wrt``) is computed with the structured implementation every ``every`` steps, so keep
    ``n`` to a few thousand. The field is copied unless ``in_place``.
    """
    if train not in ("all", "grid"):
        raise InputError(f"train must be 'all' or 'grid', got {train!r}")
    if y.ndim != 2 or y.shape[0] != x.shape[0] or y.shape[1] != field.out_dim:
        raise InputError(f"y must be [n, {field.out_dim}] with n = {x.shape[0]}, got {tuple(y.shape)}")
    if steps < 1 or every < 1:
        raise InputError(f"steps and every must be >= 1, got {steps}, {every}")
    model = field if in_place else copy.deepcopy(field)
    torch.manual_seed(seed)
    grid_p = list(model.grid_parameters().values())
    groups = [{"params": grid_p, "lr": lr}]
    others = [p for p in model.other_parameters().values() if p.requires_grad]
    if train == "all" and others:
        groups.append({"params": others, "lr": lr if lr_other is None else lr_other})
    opt = torch.optim.Adam(groups)
    x, y = x.to(grid_p[0].dtype), y.to(grid_p[0].dtype)
    g0 = gtk(model, x, wrt=wrt, implementation="structured").matrix
    norm0 = _fro(g0)
    trace = DriftTrace(linear_in_grid=bool(getattr(model, "linear_in_grid", False)))
    for step in range(steps + 1):
        loss = torch.nn.functional.mse_loss(model(x), y)
        if step % every == 0 or step == steps:
            gt = gtk(model, x, wrt=wrt, implementation="structured").matrix
            trace.steps.append(step)
            trace.drift.append(_fro(gt - g0) / norm0)
            trace.loss.append(float(loss.detach()))
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return trace
