"""``TrainConfig``: the options every training command shares, nested in each task's config.

tyro shows its fields without a prefix (``--steps``, ``--time-budget``, ``--lr-grid`` ...); each task
sets its own defaults with :func:`train_defaults`. :func:`check_train_config` is the one validation of
these options (finite, in range), raising :class:`~gridfield.errors.InputError` with the option name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from gridfield.errors import InputError

Backend = Literal["auto", "fast", "reference"]


@dataclass
class TrainConfig:
    """Training loop options (one meaning of "steps" and "time budget" for every task)."""

    steps: int = 1000
    """Optimizer steps (at most: training also stops when --time-budget is reached)."""
    time_budget: float | None = None
    """Training wall-clock budget in seconds (None: none); progress = max(step/steps, elapsed/budget)."""
    lr_grid: float | None = None
    """Adam learning rate of the grid features; None: the model preset's."""
    lr_other: float | None = None
    """Adam learning rate of decoders, heads and kernels; None: the model preset's."""
    seed: int = 0
    """Random seed (initialisation, batches, held-out sets)."""
    device: str = "auto"
    """Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."""
    backend: Backend = "auto"
    """Kernels: auto (C++/OpenMP fast paths where they apply), fast (required), reference (plain PyTorch)."""
    out: Path | None = None
    """Output folder (default: under outputs/); written atomically when the run ends."""
    progress: bool = True
    """Show a progress bar."""
    checkpoint_every: int = 500
    """Save a resumable training state every this many steps (0: only on interrupt and at the end)."""
    resume: bool = False
    """Continue the interrupted run of the same command and --out from its saved training state."""


#: how a task nests :class:`TrainConfig` so that its options keep their short names (``--steps``)
Nested = Annotated[TrainConfig, tyro.conf.arg(name="", prefix_name=False)]


def train_defaults(**overrides: Any) -> Any:
    """``dataclasses.field`` whose default is a :class:`TrainConfig` with the task's ``overrides``."""
    return field(default_factory=lambda: replace(TrainConfig(), **overrides))


def check_train_config(cfg: TrainConfig) -> None:
    """Raise :class:`InputError` naming the option when a value is out of range or not finite."""
    checks = [
        ("--steps", cfg.steps, cfg.steps >= 1, ">= 1"),
        ("--time-budget", cfg.time_budget, cfg.time_budget is None or 0 < cfg.time_budget < math.inf, "> 0"),
        ("--lr-grid", cfg.lr_grid, cfg.lr_grid is None or 0 < cfg.lr_grid < math.inf, "> 0"),
        ("--lr-other", cfg.lr_other, cfg.lr_other is None or 0 < cfg.lr_other < math.inf, "> 0"),
        ("--checkpoint-every", cfg.checkpoint_every, cfg.checkpoint_every >= 0, ">= 0"),
        ("--seed", cfg.seed, 0 <= cfg.seed < 2**63, "in [0, 2^63)"),
    ]
    for name, value, ok, need in checks:
        if not ok:
            raise InputError(f"{name} must be {need} and finite, got {value}")


def check_options(*checks: tuple[str, Any, bool, str]) -> None:
    """Task-specific option checks: each ``(option, value, ok, requirement)``; the first failing one raises."""
    for name, value, ok, need in checks:
        if not ok:
            raise InputError(f"{name} must be {need}, got {value}")


def finite(v: float | None) -> bool:
    """True for a finite number (False for None, NaN, +-inf)."""
    return v is not None and math.isfinite(v)


#: the training options a resumed run must share with the interrupted one
RESUME_TRAIN_KEYS = ("steps", "time_budget", "lr_grid", "lr_other", "seed")


def resume_key(config: dict, ignore: tuple[str, ...] = ()) -> dict:
    """The options a ``--resume`` must not change, from :func:`config_dict`'s output: every task option
    except ``ignore`` (those that only shape the outputs) plus :data:`RESUME_TRAIN_KEYS`."""
    key = {k: v for k, v in config.items() if k != "train" and k not in ignore}
    return key | {k: config["train"][k] for k in RESUME_TRAIN_KEYS}


def config_dict(cfg: Any) -> dict:
    """A (nested) config dataclass as JSON-ready data: paths as strings, nested configs as dicts."""
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if hasattr(v, "__dataclass_fields__"):
            v = config_dict(v)
        elif isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out
