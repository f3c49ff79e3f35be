"""Density activations of radiance fields.

:func:`trunc_exp` is Instant-NGP's truncated exponential: ``exp(x)`` forward, with the backward's
``exp`` clamped at ``exp(15)`` so that one large raw density cannot produce an exploding gradient
(torch-ngp's ``_trunc_exp``; tiny-cuda-nn applies the same idea in its density network).
"""

from __future__ import annotations

import torch
from torch import Tensor

TRUNC_EXP_CLAMP = 15.0  # the backward uses exp(min(x, 15))


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=TRUNC_EXP_CLAMP))


def trunc_exp(x: Tensor) -> Tensor:
    """``exp(x)`` (any shape) whose gradient is ``exp(min(x, 15))``; differentiable once."""
    return _TruncExp.apply(x)
