"""Decoders ``D`` of the formalism: identity, linear (the paper's pure grid model) and a tiny MLP."""

from __future__ import annotations

from torch import Tensor, nn


class IdentityDecoder(nn.Module):
    """``D(f) = f``: the grid's features are the output (``in_dim == out_dim``)."""

    linear = True

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if in_dim != out_dim:
            raise ValueError(f"identity decoder needs grid features == outputs, got {in_dim} != {out_dim}")
        self.in_dim = self.out_dim = out_dim

    def forward(self, f: Tensor) -> Tensor:
        return f


class LinearDecoder(nn.Linear):
    """``D(f) = A f + b``; keeps the model linear in the grid features (Theorem 2 exact)."""

    linear = True

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim)
        self.in_dim, self.out_dim = in_dim, out_dim


class MLPDecoder(nn.Sequential):
    """Instant-NGP style tiny MLP: ``hidden_layers`` ReLU layers of ``width``, linear output.

    ``[N, in_dim]`` -> ``[N, out_dim]``; differentiable (twice) in its input and parameters.
    """

    linear = False

    def __init__(self, in_dim: int, out_dim: int, width: int = 64, hidden_layers: int = 2) -> None:
        dims = [in_dim] + [width] * hidden_layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim


DECODERS = {"identity": IdentityDecoder, "linear": LinearDecoder, "mlp": MLPDecoder}


def make_decoder(name: str, in_dim: int, out_dim: int, **kwargs) -> nn.Module:
    """Build a decoder by name (``identity``, ``linear``, ``mlp``); unknown names raise ``ValueError``."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; choose one of {sorted(DECODERS)}")
    return DECODERS[name](in_dim, out_dim, **kwargs)
