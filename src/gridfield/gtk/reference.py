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

    Differentiates the whole batch function ``params -> field(x)`` (``[N, m]``) with ``jacrev``; the
    memory (``N * m * P`` floats, several times over) is checked first.
    """
    params = {k: v.detach() for k, v in field.named_parameters() if k in names}
    n_par = sum(v.numel() for v in params.values())
    m = field.out_dim
    check_budget(f"the dense reference Jacobian ({x.shape[0]} x {m} x {n_par})",
                 3.0 * x.shape[0] * m * n_par * 8, max_bytes,
                 "use implementation='structured' or 'operator', which never build a dense Jacobian")

    def call(prm: dict) -> Tensor:
        return functional_call(field, prm, (x,))

    jac = jacrev(call)(params)
    mats = [jac[k].reshape(x.shape[0], m, -1) for k in names]
    return torch.cat(mats, 2).detach().to(dtype).reshape(x.shape[0], -1).numpy()


def reference_kernel(j1: np.ndarray, j2: np.ndarray, out_dim: int) -> np.ndarray:
    """Channel-averaged kernel ``J1 J2^T / m`` from stacked dense Jacobians: ``[N1, N2]``."""
    return j1 @ j2.T / out_dim
