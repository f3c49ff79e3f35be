"""3D signed-distance-field fitting on the training core: losses, samplers and :class:`SDFTask`.

:func:`fit_sdf` fits a field ``[N, 3] -> [N, 1]`` to SDF samples (Adam, cosine decay, L1 or MAPE
loss, optional eikonal term) and returns the history with a running IoU estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gridfield.errors import InputError
from gridfield.training import TrainConfig, TrainTask, cosine, distributed, train

Sampler = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]


def sdf_loss(pred: Tensor, target: Tensor, kind: str = "mape", eps: float = 1e-2) -> Tensor:
    """Mean ``|pred - target|`` (``l1``) or ``|pred - target| / (|target| + eps)`` (``mape``, Instant-NGP)."""
    err = (pred - target).abs()
    if kind == "l1":
        return err.mean()
    if kind == "mape":
        return (err / (target.abs() + eps)).mean()
    raise InputError(f"unknown loss {kind!r}; choose l1 or mape")


def eikonal_loss(field: nn.Module, x: Tensor) -> Tensor:
    """``mean (|grad_x f(x)| - 1)^2`` with ``create_graph=True`` (differentiable: double backward)."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(field(x).sum(), x, create_graph=True)
    return (g.norm(dim=-1) - 1).pow(2).mean()


def tensor_sampler(points: Tensor, sdf: Tensor) -> Sampler:
    """Sampler drawing ``batch`` rows (with replacement) from a fixed pool ``[M, 3]``, ``[M]``."""

    def sample(batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        i = torch.randint(len(points), (batch,), generator=gen).to(points.device)
        return points[i], sdf[i]

    return sample


@torch.no_grad()
def set_output_bias(field: nn.Module, value: float) -> bool:
    """Set the bias of the decoder's last linear layer to ``value`` (returns False if it has none).

    Starting the SDF at the mean training target (positive: most of the box is outside) keeps
    grid cells that no sample reaches from starting with a sign flip (floaters).
    """
    last = [m for m in field.decoder.modules() if isinstance(m, nn.Linear)]
    if not last or last[-1].bias is None:
        return False
    last[-1].bias.fill_(value)
    return True


@torch.no_grad()
def predict(field: nn.Module, x: Tensor, chunk: int = 1 << 18) -> Tensor:
    """``[N]`` SDF values of ``field`` at ``x`` ``[N, 3]``, in chunks (no graph)."""
    return torch.cat([field(x[i : i + chunk]).reshape(-1) for i in range(0, len(x), chunk)])


class SDFTask(TrainTask):
    """SDF regression on ``batch`` samples per rank; the IoU estimate ``sdf < 0`` vs ``inside`` on ``val``."""

    schedule = staticmethod(cosine(final=0.01))

    def __init__(self, field: nn.Module, sampler: Sampler, batch: int, loss: str, eikonal: float,
                 val: tuple[Tensor, Tensor] | None, eval_every: int):
        self.module, self.sampler, self.batch, self.loss, self.eikonal = field, sampler, batch, loss, eikonal
        self.val, self.eval_every = val, eval_every if val is not None else None

    def batch_loss(self, step: int, gen: torch.Generator):
        info = distributed.current()
        x, y = self.sampler(self.batch * info.world, gen)
        part = info.shard(self.batch * info.world)
        x, y = x[part], y[part]
        total = sdf_loss(self.module(x).reshape(-1), y, self.loss)
        if self.eikonal > 0:
            total = total + self.eikonal * eikonal_loss(self.module, x)
        return total, {}

    def evaluate(self, step: int) -> dict[str, Any]:
        a, b = predict(self.module, self.val[0]) < 0, self.val[1]
        return {"iou_est": float((a & b).sum() / (a | b).sum().clamp_min(1))}


def fit_sdf(field: nn.Module, sampler: Sampler, steps: int = 1000, batch: int = 1 << 16,
            lr_grid: float = 1e-2, lr_other: float = 1e-2, loss: str = "l1", eikonal: float = 0.0,
            val: tuple[Tensor, Tensor] | None = None, eval_every: int = 50, seed: int = 0,
            progress: bool = False, hooks: Sequence[Any] | None = None,
            max_seconds: float | None = None, train_cfg: TrainConfig | None = None,
            state_path: Path | None = None, resume_key: dict | None = None) -> list[dict]:
    """Fit ``field`` (``[N, 3] -> [N, 1]``) to SDF samples in place; returns the history.

    ``sampler(batch, generator) -> (x [B, 3], sdf [B])``. ``val = (x [M, 3], inside [M] bool)``
    gives the running IoU estimate every ``eval_every`` steps (rows ``{"step": steps done, "loss",
    "iou_est", ...}``, from step 0). The ``eikonal`` weight adds :func:`eikonal_loss` on the batch
    (double backward through the grid). ``max_seconds``: the time budget (see
    :func:`gridfield.training.progress`). ``train_cfg`` overrides steps/seed/progress/max_seconds.
    """
    cfg = train_cfg or TrainConfig(steps=steps, time_budget=max_seconds, seed=seed, progress=progress,
                                   checkpoint_every=0)
    task = SDFTask(field, sampler, batch, loss, eikonal, val, eval_every)
    return train(task, cfg, lr_grid, lr_other, hooks=hooks, state_path=state_path, resume_key=resume_key).history
