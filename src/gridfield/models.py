"""Model registry: grid models by name, and ``build_field`` (grid + decoder) for the tasks and the CLI."""

from __future__ import annotations

from typing import Any

from gridfield.fields.decoders import make_decoder
from gridfield.fields.field import Field
from gridfield.grids.base import Grid


def grid_classes() -> dict[str, type[Grid]]:
    """Grid models by CLI name (imported lazily so that the registry costs nothing at import)."""
    from gridfield.grids.dense import DenseGrid

    classes: dict[str, type[Grid]] = {"dense": DenseGrid}
    try:
        from gridfield.grids.hash import HashGrid

        classes["hash"] = HashGrid
    except ImportError:  # pragma: no cover - while the module is being written
        pass
    try:
        from gridfield.grids.planes import PlaneGrid

        classes["planes"] = PlaneGrid
    except ImportError:  # pragma: no cover
        pass
    return classes


def make_grid(name: str, dim: int, **kwargs: Any) -> Grid:
    """Build grid ``name`` for ``dim``-dimensional inputs; unknown names raise ``ValueError``."""
    classes = grid_classes()
    if name not in classes:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(classes)}")
    return classes[name](dim, **kwargs)


def build_field(model: str, in_dim: int, out_dim: int, decoder: str = "linear",
                decoder_kwargs: dict[str, Any] | None = None, **grid_kwargs: Any) -> Field:
    """Grid ``model`` followed by decoder ``decoder`` (``identity``, ``linear``, ``mlp``)."""
    grid = make_grid(model, in_dim, **grid_kwargs)
    dec = make_decoder(decoder, grid.out_dim, out_dim, **(decoder_kwargs or {}))
    return Field(grid, dec)


def count_parameters(module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
