"""Non-grid reference fields that MulFAGrid builds on, behind the :class:`Field` interface.

* :class:`FourierFeatureMLP` (Tancik et al. 2020): ``gamma(x)`` then a ReLU MLP. ``mapping="gaussian"``:
  ``gamma(x) = [cos(2 pi B x), sin(2 pi B x)]``, ``B ~ N(0, sigma^2)`` of shape ``[m, d]`` (fixed);
  ``mapping="positional"``: per coordinate, frequencies ``sigma^(j/m)`` for ``j = 0..m-1``.
* :class:`FourierNet` and :class:`GaborNet` (Fathony et al. 2021, multiplicative filter networks):
  ``z_1 = g_1(x)``, ``z_{i+1} = (W_i z_i + b_i) * g_{i+1}(x)``, ``y = W_out z_{n+1} + b_out`` with
  filters ``g_i(x) = sin(Omega_i x + phi_i)`` (Fourier) or
  ``sin(Omega_i x + phi_i) * exp(-gamma_i / 2 * ||x - mu_i||^2)`` (Gabor).

Inputs are in ``[-1, 1]^d`` (so a ``sigma`` quoted for ``[0, 1]`` inputs halves). These fields have no
grid: ``grid_parameters()`` is empty, every parameter is in ``other_parameters()``, and
``linear_in_grid`` is False (their GTK is the ordinary empirical NTK over all parameters).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from gridfield.grids.base import check_points


class ReferenceField(nn.Module):
    """Common interface: ``[N, in_dim]`` -> ``[N, out_dim]``, no grid features."""

    grid = None
    linear_in_grid = False
    in_dim: int
    out_dim: int

    def grid_parameters(self) -> dict[str, nn.Parameter]:
        """Empty: these models have no grid features."""
        return {}

    def other_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter, by ``named_parameters()`` name."""
        return dict(self.named_parameters())

    def forward(self, x: Tensor) -> Tensor:
        check_points(x, self.in_dim, type(self).__name__)
        return self.evaluate(x)

    def evaluate(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FourierFeatureMLP(ReferenceField):
    """Fourier-feature MLP: ``gamma(x)`` (``[N, 2m]`` or ``[N, 2 m d]``), ``depth`` ReLU layers, linear out.

    ``B`` (the frequency matrix, ``[m, d]`` in cycles per unit of ``x``) is a fixed buffer.
    Differentiable in ``x`` and the MLP parameters.
    """

    def __init__(self, in_dim: int, out_dim: int, mapping: Literal["gaussian", "positional"] = "gaussian",
                 num_features: int = 256, sigma: float = 5.0, width: int = 256, depth: int = 3,
                 seed: int | None = None) -> None:
        super().__init__()
        if mapping not in ("gaussian", "positional"):
            raise ValueError(f"unknown Fourier feature mapping {mapping!r}; choose 'gaussian' or 'positional'")
        if num_features < 1 or depth < 1 or width < 1 or sigma <= 0:
            raise ValueError(f"FourierFeatureMLP needs num_features, depth, width >= 1 and sigma > 0, got "
                             f"{num_features}, {depth}, {width}, {sigma}")
        self.in_dim, self.out_dim, self.mapping = in_dim, out_dim, mapping
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        if mapping == "gaussian":
            b = torch.randn(num_features, in_dim, generator=gen) * sigma
        else:  # log-linear frequencies per axis: rows e_i * sigma^(j/m)
            f = sigma ** (torch.arange(num_features) / num_features)
            b = torch.kron(torch.eye(in_dim), f[:, None])
        self.register_buffer("B", b)
        dims = [2 * b.shape[0]] + [width] * depth
        layers: list[nn.Module] = []
        for a, c in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, c), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(dims[-1], out_dim))

    def encode(self, x: Tensor) -> Tensor:
        """``[cos(2 pi B x), sin(2 pi B x)]``: ``[N, d]`` -> ``[N, 2 * rows(B)]``."""
        arg = 2 * math.pi * x @ self.B.T
        return torch.cat([torch.cos(arg), torch.sin(arg)], -1)

    def evaluate(self, x: Tensor) -> Tensor:
        return self.mlp(self.encode(x))


class _MFN(ReferenceField):
    """Shared body of FourierNet and GaborNet: ``n_layers`` multiplicative layers of ``width``.

    Hidden ``W_i ~ U(-sqrt(weight_scale / width), +)``, biases ``U(-1/sqrt(width), +)``; filter phases
    ``phi_i ~ U(-pi, pi)``; filter frequencies ``input_scale / sqrt(n_layers + 1)`` times ``U(-1, 1)``
    (Fourier) or times ``sqrt(gamma_i)`` (Gabor) as in Fathony et al.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int, n_layers: int, weight_scale: float) -> None:
        super().__init__()
        if n_layers < 1 or width < 1:
            raise ValueError(f"MFN needs n_layers >= 1 and width >= 1, got {n_layers}, {width}")
        self.in_dim, self.out_dim, self.n_layers = in_dim, out_dim, n_layers
        self.linears = nn.ModuleList(nn.Linear(width, width) for _ in range(n_layers))
        bound = math.sqrt(weight_scale / width)
        for lin in self.linears:
            nn.init.uniform_(lin.weight, -bound, bound)
        self.out = nn.Linear(width, out_dim)
        self.filter_phase = nn.Parameter(torch.empty(n_layers + 1, width).uniform_(-math.pi, math.pi))

    def filter(self, i: int, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, x: Tensor) -> Tensor:
        z = self.filter(0, x)
        for i, lin in enumerate(self.linears):
            z = lin(z) * self.filter(i + 1, x)
        return self.out(z)


class FourierNet(_MFN):
    """MFN with sinusoidal filters ``sin(Omega_i x + phi_i)``; ``Omega`` ``[n_layers + 1, width, d]``."""

    def __init__(self, in_dim: int, out_dim: int, width: int = 256, n_layers: int = 3,
                 input_scale: float = 128.0, weight_scale: float = 1.0) -> None:
        super().__init__(in_dim, out_dim, width, n_layers, weight_scale)
        s = input_scale / math.sqrt(n_layers + 1)
        self.filter_freq = nn.Parameter(torch.empty(n_layers + 1, width, in_dim).uniform_(-s, s))

    def filter(self, i: int, x: Tensor) -> Tensor:
        """``sin(Omega_i x + phi_i)``: ``[N, d]`` -> ``[N, width]``."""
        return torch.sin(x @ self.filter_freq[i].T + self.filter_phase[i])


class GaborNet(_MFN):
    """MFN with Gabor filters; centres ``mu ~ U(-1, 1)^d``, ``gamma ~ Gamma(alpha / (n_layers + 1), beta)``."""

    def __init__(self, in_dim: int, out_dim: int, width: int = 256, n_layers: int = 3,
                 input_scale: float = 128.0, weight_scale: float = 1.0, alpha: float = 6.0,
                 beta: float = 1.0) -> None:
        super().__init__(in_dim, out_dim, width, n_layers, weight_scale)
        gamma = torch.distributions.Gamma(alpha / (n_layers + 1), beta).sample((n_layers + 1, width))
        s = input_scale / math.sqrt(n_layers + 1)
        freq = torch.empty(n_layers + 1, width, in_dim).uniform_(-s, s) * gamma.sqrt().unsqueeze(-1)
        self.filter_freq = nn.Parameter(freq)
        self.filter_mu = nn.Parameter(torch.empty(n_layers + 1, width, in_dim).uniform_(-1, 1))
        self.filter_gamma = nn.Parameter(gamma)

    def filter(self, i: int, x: Tensor) -> Tensor:
        """``sin(Omega_i x + phi_i) * exp(-gamma_i / 2 * ||x - mu_i||^2)``: ``[N, d]`` -> ``[N, width]``."""
        mu = self.filter_mu[i]
        d2 = (x * x).sum(-1, keepdim=True) + (mu * mu).sum(-1) - 2 * x @ mu.T
        env = torch.exp(-0.5 * d2.clamp_min(0) * self.filter_gamma[i])
        return torch.sin(x @ self.filter_freq[i].T + self.filter_phase[i]) * env


class PositionalEncodingMLP(FourierFeatureMLP):
    """:class:`FourierFeatureMLP` with ``mapping="positional"`` defaults (32 octaves up to 64 cycles)."""

    def __init__(self, in_dim: int, out_dim: int, mapping: Literal["gaussian", "positional"] = "positional",
                 num_features: int = 32, sigma: float = 64.0, **kwargs) -> None:
        super().__init__(in_dim, out_dim, mapping, num_features, sigma, **kwargs)


def reference_classes() -> dict[str, type[ReferenceField]]:
    """Non-grid models by CLI name; ``mfn`` is FourierNet. Built as ``cls(in_dim, out_dim, **kwargs)``."""
    return {"ffmlp": FourierFeatureMLP, "ffmlp-pe": PositionalEncodingMLP, "mfn": FourierNet,
            "mfn-fourier": FourierNet, "mfn-gabor": GaborNet}
