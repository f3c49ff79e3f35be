"""Progress and learning-rate schedules: one definition of progress drives every schedule.

``progress = max(step / steps, elapsed / time_budget)`` in ``[0, 1]``; training ends at 1. A schedule
maps progress to a learning-rate multiplier.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[float], float]


def progress(step: int, steps: int, seconds: float = 0.0, time_budget: float | None = None) -> float:
    """``max(step / steps, seconds / time_budget)`` (the time term only with a budget)."""
    p = step / steps
    if time_budget is not None:
        p = max(p, seconds / time_budget)
    return p


def cosine(final: float = 0.01, warmup: float = 0.0) -> Schedule:
    """Linear warm-up over the first ``warmup`` of progress, then cosine decay from 1 to ``final``."""

    def factor(p: float) -> float:
        if p < warmup:
            return max(p / warmup, 1e-3)
        t = (p - warmup) / max(1e-12, 1 - warmup)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


def exponential(final: float = 0.1) -> Schedule:
    """``final ** p``: exponential decay from 1 to ``final`` (DVGO / Instant-NGP style)."""
    return lambda p: final ** min(1.0, p)
