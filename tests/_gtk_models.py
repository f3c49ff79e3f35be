"""Small instances of every registered grid model for the GTK tests (exact float64 comparisons)."""

from __future__ import annotations

import pytest
import torch

from gridfield.fields import Field, make_decoder
from gridfield.models import grid_classes, make_grid
from gridfield.threads import single_thread

SMALL = {
    "dense": dict(resolutions=[3, 5], features_per_level=2),
    "hash": dict(n_levels=3, features_per_level=2, log2_hashmap_size=5, base_resolution=3),
    "planes": dict(resolutions=[3, 5], features_per_level=2),
    "planes-product": dict(resolutions=[3, 5], features_per_level=2, aggregate="product"),
    "mulfagrid": dict(resolutions=[3, 5], features_per_level=2, frequencies=2, width=4, layers=1),
}


def model_names() -> list[str]:
    """Every registered grid model, plus the product form of the planes."""
    names = sorted(grid_classes())
    return names + (["planes-product"] if "planes" in names else [])


def small_field(name: str, decoder: str = "identity", dim: int = 2, out: int = 3, seed: int = 0) -> Field:
    """A float64 field with random (not tiny) features so that every Jacobian entry matters."""
    torch.manual_seed(seed)
    grid = make_grid(name.split("-")[0], dim, **SMALL.get(name, {}))
    with torch.no_grad():
        for p in grid.grid_parameters().values():
            p.uniform_(0.2, 1.0) if name.endswith("product") else p.normal_()
    out = grid.out_dim if decoder == "identity" else out
    kw = dict(width=16) if decoder == "mlp" else {}
    return Field(grid, make_decoder(decoder, grid.out_dim, out, **kw)).double()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tests use tiny problems: one torch thread avoids oversubscribing a busy 2-core machine."""
    with single_thread():
        yield
