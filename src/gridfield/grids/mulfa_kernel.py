"""The MulFAGrid kernel network: a multiplicative filter network evaluated per activated vertex.

For a query in grid units ``u`` (``[N, a]``) and the positions ``v_hat`` (``[N, K, a]``, in
``[-1, 1]^a``) of the ``K`` vertices it activates on one lattice of ``R`` nodes per axis::

    z_1     = gamma(u) = [sin(2^l pi u), cos(2^l pi u)]_{l = 0..L-1}          # [N, 2 L a]
    z_{k+1} = (W_k z_k + b_k) * sin(Omega_k v_hat + psi_k),   k = 1..layers   # [N, K, width]
    raw     = w_out . z_{layers+1} + b_out                                    # [N, K]

The filter frequencies are stored on the scale of the grid: ``Omega_k = (R - 1) / 2 * theta_k``, so
``theta_k`` is in radians per cell (a vertex step changes the filter phase by ``theta_k``), whatever
the resolution. That keeps one learning rate and one initialisation meaningful at every level.

Cost: ``gamma(u)`` and the first linear layer run once per point; every other layer is a batched
``[N * K, width] x [width, width]`` matrix product (no Python loop over points or vertices).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def fourier_features(u: Tensor, frequencies: int) -> Tensor:
    """``[sin(2^l pi u), cos(2^l pi u)]`` for ``l = 0..frequencies-1``: ``[N, a]`` -> ``[N, 2 L a]``.

    Order: all sines (frequency-major, coordinate-minor), then all cosines. Differentiable in ``u``.
    """
    scales = math.pi * 2.0 ** torch.arange(frequencies, dtype=u.dtype, device=u.device)  # [L]
    arg = (u.unsqueeze(-2) * scales.unsqueeze(-1)).flatten(-2)  # [N, L * a]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class MulFAKernel(nn.Module):
    """Raw kernel ``phi_raw(x, v)`` of one lattice (see the module docstring for the equations).

    Args:
        dim: number of lattice axes ``a`` (2 or 3 for a dense grid, 2 for a plane).
        resolution: nodes per axis ``R`` (sets ``Omega_k = (R - 1) / 2 * theta_k``); a hash level passes
            ``scale + 1`` (a float).
        frequencies: Fourier octaves ``L`` of the query encoding.
        width: hidden width of the filter layers.
        layers: number of multiplicative filter layers (``>= 1``).
        filter_scale: ``theta_k ~ U(-s, s) / sqrt(layers)`` radians per cell at initialisation.
        out_scale: ``w_out ~ U(-c, c) / sqrt(width)``; ``0`` makes the raw kernel constant at init.
        out_bias: initial ``b_out``.

    Initialisation: hidden ``W_k, b_k`` keep PyTorch's ``nn.Linear`` default
    (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), filter phases ``psi_k ~ U(-pi, pi)``.
    """

    def __init__(self, dim: int, resolution: float, frequencies: int = 4, width: int = 16, layers: int = 3,
                 filter_scale: float = 0.5, out_scale: float = 1.0, out_bias: float = 1.0) -> None:
        super().__init__()
        if layers < 1 or width < 1 or frequencies < 1:
            raise ValueError(f"MulFAKernel needs layers, width, frequencies >= 1, got {layers}, {width}, {frequencies}")
        self.dim, self.resolution, self.frequencies = dim, resolution, frequencies
        self.half_cells = 0.5 * (resolution - 1)
        sizes = [2 * frequencies * dim] + [width] * layers
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        #: theta_k ``[layers, width, dim]`` (radians per cell) and psi_k ``[layers, width]``
        self.filter_freq = nn.Parameter(torch.empty(layers, width, dim).uniform_(-1, 1)
                                        * (filter_scale / math.sqrt(layers)))
        self.filter_phase = nn.Parameter(torch.empty(layers, width).uniform_(-math.pi, math.pi))
        self.out = nn.Linear(width, 1)
        with torch.no_grad():
            self.out.weight.uniform_(-1, 1).mul_(out_scale / math.sqrt(width))
            self.out.bias.fill_(out_bias)

    def filter(self, k: int, v_hat: Tensor) -> Tensor:
        """``sin(Omega_k v_hat + psi_k)`` of layer ``k``: ``[N, K, a]`` -> ``[N, K, width]``."""
        omega = self.filter_freq[k] * self.half_cells  # [width, a]
        return torch.sin(torch.matmul(v_hat, omega.T) + self.filter_phase[k])

    def forward(self, u: Tensor, v_hat: Tensor) -> Tensor:
        """Raw kernel ``[N, K]`` for queries ``u [N, a]`` (grid units) and vertices ``v_hat [N, K, a]``.

        Differentiable in ``u``, ``v_hat`` and every parameter.
        """
        z = self.linears[0](fourier_features(u, self.frequencies)).unsqueeze(1)  # [N, 1, width]
        for k in range(len(self.linears)):
            if k:
                z = self.linears[k](z)
            z = z * self.filter(k, v_hat)  # [N, K, width]
        return self.out(z).squeeze(-1)
