"""The one training loop of every task: optimizer groups, schedule, time budget, hooks, divergence
check, progress bar, periodic and interrupt checkpoints, resume, and DDP under torchrun.

A task supplies a :class:`TrainTask` (its batch-and-loss function and its evaluation); :func:`train`
does the rest. One step, in order: ``task.step_begin`` (may replace parameters, e.g. a
coarse-to-fine refit; the optimizer is then rebuilt), the schedule sets the learning rates, the
task's loss, the hooks of :mod:`gridfield.training.hooks` around ``backward``, the optimizer step.
No host synchronisation in the step on CUDA except every :data:`CUDA_SYNC_EVERY` steps (divergence
check and progress bar).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from gridfield.errors import InputError
from gridfield.training import distributed
from gridfield.training.config import TrainConfig
from gridfield.training.hooks import call_hooks
from gridfield.training.resume import InterruptGuard, load_state, save_state
from gridfield.training.runtime import make_optimizer
from gridfield.training.schedule import Schedule, cosine, progress

CUDA_SYNC_EVERY = 16


class DivergedError(InputError):
    """The loss became non-finite; the message names the step and what to try."""


class TrainTask:
    """What a task gives the loop. Subclass and implement :meth:`batch_loss` (and :meth:`evaluate`).

    ``module`` is trained in place; its ``grid_parameters()`` / ``other_parameters()`` are the two
    Adam groups. ``schedule`` maps progress to the learning-rate factor; ``fused`` picks fused Adam.
    ``seconds``: the loop's training clock (seconds spent in training steps so far, evaluation
    excluded), set before every :meth:`evaluate`.
    """

    module: nn.Module
    schedule: Schedule = staticmethod(cosine())
    fused: bool = False
    eval_every: int | None = None
    seconds: float = 0.0

    def batch_loss(self, step: int, gen: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
        """The loss of step ``step`` (scalar, differentiable) and values for the progress bar.

        ``gen`` is the run's seeded CPU generator, the same on every rank: draw the global batch
        and keep ``distributed.current().shard(n)`` of it under torchrun.
        """
        raise NotImplementedError

    def step_begin(self, step: int, p: float) -> bool:
        """Called before each step with the progress ``p``; True when ``module``'s parameters changed."""
        return False

    def evaluate(self, step: int) -> dict[str, Any]:
        """Numbers for the history (rank 0, without gradients); default: none."""
        return {}

    def postfix(self, loss: float, logs: dict[str, Any]) -> dict[str, str]:
        """Progress-bar fields from the last loss and :meth:`batch_loss`'s logs."""
        return {"loss": f"{loss:.4g}"}

    def state_dict(self) -> dict[str, Any]:
        """What besides the module and optimizer a resumed run needs (e.g. an occupancy grid)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (before the module's state is loaded)."""


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    history: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    resumed_from: int | None = None


class _LossModule(nn.Module):
    """The task's loss as a module, so that DDP can wrap one forward per step."""

    def __init__(self, task: TrainTask):
        super().__init__()
        self.field = task.module
        self._task = task

    def forward(self, step: int, gen: torch.Generator):
        return self._task.batch_loss(step, gen)


def _set_lr(opt: torch.optim.Optimizer, factor: float) -> None:
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * factor


def _finite_loss(loss: Tensor, step: int, lr_grid: float, lr_other: float) -> float:
    """The loss as a float (a host sync); :class:`DivergedError` naming the step when it is not finite."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise DivergedError(f"training diverged: the loss became {value} by step {step}; lower --lr-grid / "
                            f"--lr-other (now {lr_grid:g} / {lr_other:g}), or try --backend reference")
    return value


def _wrap(task: TrainTask, info: distributed.DistInfo):
    if info.world == 1:
        return task.batch_loss
    # buffers (a box, an occupancy grid) are the same on every rank: no per-step broadcast
    new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    return DistributedDataParallel(_LossModule(task), **{"forward_sync_buffers" if new_name else
                                                          "broadcast_buffers": False})


def train(task: TrainTask, cfg: TrainConfig, lr_grid: float, lr_other: float, *,
          hooks: Sequence[Any] | None = None, state_path: Path | None = None,
          resume_key: dict | None = None) -> TrainResult:
    """Train ``task.module`` in place for ``cfg.steps`` steps or ``cfg.time_budget`` seconds.

    ``state_path``: where the resumable training state goes (every ``cfg.checkpoint_every`` steps,
    on SIGINT/SIGTERM and at the end); with ``cfg.resume`` the run continues from it. ``resume_key``
    (plain data: the options that must not change) is stored and compared on resume. An interrupt
    saves the state and raises :class:`KeyboardInterrupt`; a non-finite loss raises
    :class:`DivergedError`.
    """
    info = distributed.current()
    device = next(task.module.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    res = TrainResult()
    step, seconds = 0, 0.0
    if cfg.resume:
        if state_path is None or not Path(state_path).is_file():
            raise InputError(f"--resume: no saved training state at {str(state_path)!r}; run without --resume")
        st = load_state(state_path, resume_key or {})
        task.load_state_dict(st["task"])
        task.module.load_state_dict(st["module"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        step, seconds, res.history, res.resumed_from = st["step"], st["seconds"], st["history"], st["step"]
    opt = make_optimizer(task.module, lr_grid, lr_other, fused=task.fused)
    if cfg.resume:
        opt.load_state_dict(st["optimizer"])
    run = _wrap(task, info)
    sync_every = 1 if device.type == "cpu" else CUDA_SYNC_EVERY
    bar = None
    if cfg.progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    if step == 0 and task.eval_every and info.is_main:
        task.seconds = 0.0
        res.history.append({"step": 0, **task.evaluate(0)})

    def history_row() -> dict:
        task.seconds = seconds
        return {"step": step, "loss": loss_v, "lr_grid": opt.param_groups[0]["lr"], "seconds": seconds,
                **task.evaluate(step)}

    def snapshot() -> dict:
        return {"step": step, "seconds": seconds, "module": task.module.state_dict(),
                "optimizer": opt.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "task": task.state_dict(), "history": res.history, "key": resume_key or {}}

    loss_v, loss = float("nan"), None
    with InterruptGuard() as guard:
        while True:
            p = progress(step, cfg.steps, seconds, cfg.time_budget)
            if cfg.time_budget is not None and info.world > 1:
                p = distributed.broadcast_float(p, device)
            if p >= 1.0:
                break
            t0 = time.perf_counter()
            if task.step_begin(step, p):
                opt = make_optimizer(task.module, lr_grid, lr_other, fused=task.fused)
                run = _wrap(task, info)
            _set_lr(opt, task.schedule(p))
            loss, logs = run(step, gen)
            call_hooks(hooks, "step_pre_backward", step, task.module, loss)
            loss.backward()
            call_hooks(hooks, "step_post_backward", step, task.module, loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            seconds += time.perf_counter() - t0
            call_hooks(hooks, "step_end", step, task.module, loss)
            step += 1
            due_eval = task.eval_every and step % task.eval_every == 0
            if step % sync_every == 0 or due_eval or step == cfg.steps:
                loss_v = _finite_loss(loss, step, lr_grid, lr_other)
            if due_eval and info.is_main:
                res.history.append(history_row())
            if bar is not None:
                bar.update(1)
                if cfg.time_budget is not None and p > 0:
                    bar.total = max(step, min(cfg.steps, round(step / max(p, 1e-9))))
                if step % 10 == 0:
                    bar.set_postfix(task.postfix(loss_v, logs), refresh=False)
            if state_path is not None and info.is_main and (
                    guard.requested or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                save_state(state_path, snapshot())
            if guard.requested:
                raise KeyboardInterrupt(f"at step {step}" if state_path is not None else "")
    if bar is not None:
        bar.close()
    if loss is not None:
        loss_v = _finite_loss(loss, step, lr_grid, lr_other)
    if task.eval_every and info.is_main and (not res.history or res.history[-1]["step"] != step):
        res.history.append(history_row())
    if state_path is not None and info.is_main:
        save_state(state_path, snapshot())  # an interrupt while evaluating/writing resumes here
    res.steps, res.seconds, res.final_loss = step, seconds, loss_v
    return res
