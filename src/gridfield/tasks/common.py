"""What every task command does around the training loop: check the options and the output folder
before any work, join a torchrun group, and at the end write the outputs (rank 0, atomically) and drop
the resumable state the run no longer needs."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gridfield import machine
from gridfield.errors import InputError
from gridfield.outdir import check_out_dir, write_dir_atomically
from gridfield.training import TrainConfig, check_train_config, distributed, resolve_device, state_path_for


@dataclass(frozen=True)
class RunContext:
    """A task run's device, place in the process group, output folder and resumable-state file."""

    device: torch.device
    dist: distributed.DistInfo
    out: Path
    state: Path


def start_run(train: TrainConfig, default_out: Path) -> RunContext:
    """Validate ``train`` and ``--out`` (before any work), pick the device, join torchrun's group."""
    check_train_config(train)
    device = distributed.local_device(resolve_device(train.device))
    out = check_out_dir(train.out or default_out)
    state = state_path_for(out)
    if train.resume and not state.is_file():
        raise InputError(f"--resume: no saved training state for --out {str(out)!r} (looked for {str(state)!r})")
    info = distributed.setup(device)
    if info.is_main and state.is_file() and not train.resume:
        print(f"note: {state} holds an interrupted run of this --out; starting afresh (pass --resume to "
              "continue it instead)", file=sys.stderr)
    return RunContext(device, info, out, state)


def finish_run(ctx: RunContext, write: Callable[[Path], None]) -> None:
    """Rank 0 writes the output folder atomically, then removes the run's resumable state."""
    if ctx.dist.is_main:
        write_dir_atomically(ctx.out, write)
        ctx.state.unlink(missing_ok=True)
    distributed.barrier()


def run_record(task: str, device: torch.device | str) -> dict:
    """What ``metrics.json`` says about a run besides its numbers: the ``task``, the ``machine``
    (:func:`gridfield.machine.describe`) and the ``date`` (local time, ISO 8601); ``gridfield report``
    shows them."""
    return {"task": task, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine.describe(device)}


def apply_backend(module: nn.Module, backend: str) -> nn.Module:
    """Set ``backend`` (``auto`` | ``fast`` | ``reference``) on every submodule that has one; returns ``module``."""
    for m in module.modules():
        if hasattr(m, "backend"):
            m.backend = backend
    return module
