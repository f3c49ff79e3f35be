"""Model registry: grid models by name, and ``build_field`` (grid + decoder) for the tasks and the CLI."""

from __future__ import annotations

from typing import Any

from gridfield.fields.decoders import make_decoder
from gridfield.fields.field import Field
from gridfield.fields.references import reference_classes as _reference_classes
from gridfield.grids.base import Grid
from gridfield.grids.dense import DenseGrid
from gridfield.grids.hash import HashGrid
from gridfield.grids.mulfagrid import MulFAGrid
from gridfield.grids.planes import PlaneGrid


def grid_classes() -> dict[str, type[Grid]]:
    """Grid models by CLI name."""
    return {"dense": DenseGrid, "hash": HashGrid, "planes": PlaneGrid, "mulfagrid": MulFAGrid}


def reference_classes() -> dict[str, Any]:
    """Non-grid reference models (Fourier-feature MLP, MFN) by name; ``build_field`` checks these first."""
    return _reference_classes()


def make_grid(name: str, dim: int, **kwargs: Any) -> Grid:
    """Build grid ``name`` for ``dim``-dimensional inputs; unknown names raise ``ValueError``."""
    classes = grid_classes()
    if name not in classes:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(classes)}")
    return classes[name](dim, **kwargs)


def build_field(model: str, in_dim: int, out_dim: int, decoder: str = "linear",
                decoder_kwargs: dict[str, Any] | None = None, **grid_kwargs: Any) -> Field:
    """Grid ``model`` followed by decoder ``decoder`` (``identity``, ``linear``, ``mlp``).

    A reference model (``reference_classes()``: no grid, no decoder) is built as
    ``cls(in_dim, out_dim, **grid_kwargs)``; ``decoder`` is ignored for it.
    """
    refs = reference_classes()
    if model in refs:
        return refs[model](in_dim, out_dim, **grid_kwargs)
    grid = make_grid(model, in_dim, **grid_kwargs)
    dec = make_decoder(decoder, grid.out_dim, out_dim, **(decoder_kwargs or {}))
    return Field(grid, dec)


def count_parameters(module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
