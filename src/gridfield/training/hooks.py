"""Hooks (gsplat style): code that runs at fixed points of every training step.

Per step the loop runs, in this order: the task's loss, ``step_pre_backward``, ``loss.backward()``,
``step_post_backward`` (gradients are there to read or edit), the optimizer step and ``zero_grad``,
then ``step_end``. Each method gets ``(step, module, loss)``. A plain callable counts as ``step_end``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

STAGES = ("step_pre_backward", "step_post_backward", "step_end")


class Hook:
    """Base class: override any of the three stages (each does nothing by default)."""

    def step_pre_backward(self, step: int, module: nn.Module, loss: Tensor) -> None:
        """After the loss, before ``backward``."""

    def step_post_backward(self, step: int, module: nn.Module, loss: Tensor) -> None:
        """After ``backward``, before the optimizer step."""

    def step_end(self, step: int, module: nn.Module, loss: Tensor) -> None:
        """After the optimizer step."""


def call_hooks(hooks: Sequence[Any] | None, stage: str, step: int, module: nn.Module, loss: Tensor) -> None:
    """Run ``stage`` of every hook; a plain callable ``hook(step, module, loss)`` runs at ``step_end``."""
    for h in hooks or ():
        if hasattr(h, stage):
            getattr(h, stage)(step, module, loss)
        elif stage == "step_end" and callable(h) and not any(hasattr(h, s) for s in STAGES):
            h(step, module, loss)
