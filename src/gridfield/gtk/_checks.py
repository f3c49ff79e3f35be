"""Input validation and memory budgeting for the GTK engine (run before any large allocation)."""

from __future__ import annotations

import torch
from torch import Tensor

from gridfield.errors import InputError

GIB = 1024**3
_FALLBACK_AVAILABLE = 4 * GIB


def available_bytes() -> int:
    """Memory the OS reports as available (``MemAvailable``), or 4 GiB when it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _FALLBACK_AVAILABLE


def default_budget() -> int:
    """Default memory budget of one GTK request: half of the available memory, 1 GiB at least."""
    return max(GIB, available_bytes() // 2)


def check_budget(what: str, need: float, budget: int | None, instead: str) -> None:
    """Raise :class:`InputError` when ``need`` bytes exceed ``budget`` (``None``: the default).

    ``what`` names the allocation, ``instead`` says what to do instead; nothing is allocated here.
    """
    limit = default_budget() if budget is None else budget
    if need > limit:
        raise InputError(
            f"{what} would need about {need / GIB:.2f} GiB, over the budget of {limit / GIB:.2f} GiB; "
            f"{instead} (or pass a larger max_bytes)"
        )


def check_points(x: Tensor, dim: int, name: str) -> None:
    """Validate GTK input points: a finite floating ``[N, dim]`` tensor inside ``[-1, 1]^dim``."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape [N, {dim}], got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != dim:
        raise InputError(f"{name} must have shape [N, {dim}] for this {dim}-D model, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty: the GTK needs at least one point")
    if not x.is_floating_point():
        raise InputError(f"{name} must be floating point, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite coordinates")
    worst = x.abs().max().item()
    if worst > 1 + 1e-6:
        raise InputError(
            f"{name} has coordinates outside the domain [-1, 1]^{dim} (max |x| = {worst:.4g}); "
            "rescale the points into [-1, 1]"
        )


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`InputError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name} must be one of {list(choices)}, got {value!r}")


