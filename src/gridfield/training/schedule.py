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


def multistep(milestones: tuple[float, ...], gamma: float, warmup: float = 0.0) -> Schedule:
    """Flat, times ``gamma`` at each progress milestone (Instant-NGP / nerfacc's step decay is x0.33 at
    0.5, 0.75 and 0.9), after a linear warm-up from 1% over the first ``warmup`` of progress."""

    def factor(p: float) -> float:
        w = 0.01 + 0.99 * p / warmup if p < warmup else 1.0
        return w * gamma ** sum(p >= m for m in milestones)

    return factor
