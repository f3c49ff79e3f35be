"""Device choice, seeding and the optimizer: what every training run sets up the same way."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from gridfield.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or a torch device string, checked to be usable.

    Raises ``InputError`` naming the device when it is unknown or unavailable.
    """
    try:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise InputError(f"device {name!r} is not usable: {str(e).splitlines()[0]}") from None
    if dev.type == "meta":
        raise InputError(f"device {name!r} is not usable: the meta device holds no data; use cpu or cuda")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a CPU generator for the loop's own sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(module: nn.Module, lr_grid: float, lr_other: float, fused: bool = False) -> torch.optim.Adam:
    """Adam with ``lr_grid`` for grid features (``module.grid_parameters()``) and ``lr_other`` for the rest.

    ``betas = (0.9, 0.99)``, ``eps = 1e-15`` (Instant-NGP's settings; a tiny eps keeps untouched
    grid rows, whose gradients are exactly zero, unchanged). Empty groups are dropped; each group
    keeps its base rate as ``initial_lr`` (the schedule multiplies it).
    """
    grid = [p for p in module.grid_parameters().values() if p.requires_grad]
    other = [p for p in module.other_parameters().values() if p.requires_grad]
    groups = [{"params": ps, "lr": lr, "initial_lr": lr, "name": n} for n, ps, lr in
              (("grid", grid, lr_grid), ("other", other, lr_other)) if ps]
    if not groups:
        raise ValueError("the field has no trainable parameters")
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15, fused=fused or None)
