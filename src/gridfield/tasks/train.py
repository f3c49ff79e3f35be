"""Reusable pieces of the task loops: Adam with two learning rates, the schedule, hooks, seeding.

The loops themselves stay in each task (``tasks/image.py`` ...), small and explicit; these helpers
keep them identical where they should be. :func:`write_dir_atomically` gives every task's CLI the
"nothing half-written" guarantee (outputs appear all at once, or not at all).

Hooks (gsplat style): a hook is either a callable ``hook(step, field, loss)`` run after the optimizer
step, or an object with optional methods ``step_pre_backward(step, field, loss)`` and
``step_post_backward(step, field, loss)`` (after ``loss.backward()``, before the optimizer step,
so it can read or edit gradients).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from gridfield.outdir import write_dir_atomically  # noqa: F401 - re-exported for the tasks


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or a torch device string, checked to be usable.

    Raises ``InputError`` naming the device when it is unknown or unavailable.
    """
    from gridfield.errors import InputError

    try:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise InputError(f"device {name!r} is not usable: {str(e).splitlines()[0]}") from None
    return dev


def make_optimizer(field: nn.Module, lr_grid: float, lr_other: float) -> torch.optim.Adam:
    """Adam with ``lr_grid`` for grid features (``field.grid_parameters()``) and ``lr_other`` for the rest.

    ``betas = (0.9, 0.99)``, ``eps = 1e-15`` (Instant-NGP's settings; a tiny eps keeps untouched
    grid rows, whose gradients are exactly zero, unchanged). Empty groups are dropped.
    """
    grid = [p for p in field.grid_parameters().values() if p.requires_grad]
    other = [p for p in field.other_parameters().values() if p.requires_grad]
    groups = [{"params": ps, "lr": lr, "name": n} for n, ps, lr in
              (("grid", grid, lr_grid), ("other", other, lr_other)) if ps]
    if not groups:
        raise ValueError("the field has no trainable parameters")
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)


def cosine_factor(step: int, steps: int, final: float = 0.01, warmup: int = 0) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``final``.

    ``step`` counts from 0; the factor is 1 right after warm-up and ``final`` at ``step = steps - 1``.
    """
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - 1 - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def make_scheduler(opt: torch.optim.Optimizer, steps: int, final: float = 0.01, warmup: int = 0):
    """``LambdaLR`` applying :func:`cosine_factor` to every parameter group."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_factor(s, steps, final, warmup))


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a CPU generator for the loop's own sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def call_hooks(hooks: Sequence[Any] | None, stage: str, step: int, field: nn.Module, loss) -> None:
    """Run the hooks of ``stage`` (``step_pre_backward``, ``step_post_backward`` or ``step_end``)."""
    for h in hooks or ():
        if stage == "step_end" and callable(h) and not hasattr(h, "step_post_backward"):
            h(step, field, loss)
        elif hasattr(h, stage):
            getattr(h, stage)(step, field, loss)
