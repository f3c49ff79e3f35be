"""Shared pieces of the GTK analyses (``gridfield gtk-*``): the model line-up, colours, lattices, output.

Every analysis builds the same small models (comparable sizes, one colour each, kept across figures)
and writes PNG figures plus one JSON of the numbers into its output folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gridfield import presets
from gridfield.errors import InputError
from gridfield.fields import Field, make_decoder
from gridfield.models import grid_classes
from gridfield.outdir import write_dir_atomically
from gridfield.report.figures import model_color as palette
from gridfield.threads import single_thread

_EXTRA_COLORS = {"planes-product": "#bcbd22", "hash-mlp": "#ff9896", "mulfagrid-paper": "#c5b0d5"}
# The line-up (gridfield.presets.analyses): resolutions 8..32, about the same number of grid rows each.
DEFAULT_MODELS = tuple(presets.models("analyses"))
# Models of the image fits (MulFAGrid's kernel network makes it the slowest: ~0.2 s per step at 48x48).
FIT_MODELS = DEFAULT_MODELS


def model_color(name: str) -> str:
    """One fixed colour per model (the project's palette, plus the product planes and the variants of
    ``gtk-ranking``)."""
    if name in _EXTRA_COLORS:
        return _EXTRA_COLORS[name]
    return palette(name)


def build(name: str, dim: int, decoder: str = "linear", out_dim: int = 1, seed: int = 0,
          dtype: torch.dtype = torch.float64):
    """Analysis model ``name`` for ``dim``-D inputs, or ``None`` when it does not support ``dim``/exist.

    ``out_dim`` is ignored for the identity decoder (the grid's features are the outputs).
    """
    spec = presets.get("analyses", name)
    if spec.model not in grid_classes():
        return None
    torch.manual_seed(seed)
    try:
        grid = spec.build(dim)
    except ValueError:  # e.g. planes in 1D
        return None
    out = grid.out_dim if decoder == "identity" else out_dim  # identity: the features are the outputs
    return Field(grid, make_decoder(decoder, grid.out_dim, out)).to(dtype)


def lineup(names, dim: int, decoder: str = "linear", out_dim: int = 1, seed: int = 0) -> tuple[dict, list[str]]:
    """``({name: field}, skipped names)`` for the models that support ``dim``."""
    check_decoder(decoder)
    fields, skipped = {}, []
    for n in names:
        f = build(n, dim, decoder, out_dim, seed)
        (skipped.append(n) if f is None else fields.__setitem__(n, f))
    if not fields:
        raise InputError(f"none of the models {list(names)} supports {dim}-D inputs")
    return fields, skipped


def lattice(shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Points of a regular lattice on ``[-1, 1]^d``, row-major (last axis fastest, it is coordinate 0)."""
    axes = [torch.linspace(-1, 1, s, dtype=dtype) for s in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids[::-1]], 1)


def figure(cols: int = 1, rows: int = 1, width: float = 4.0, height: float = 3.4):
    """A matplotlib figure (Agg, no pyplot state) and its axes array ``[rows, cols]``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, np.atleast_2d(fig.subplots(rows, cols, squeeze=False))


def save(fig, out: Path, name: str) -> str:
    """Write ``fig`` as ``out/name`` (PNG); returns ``name`` (paths in payloads are relative to the folder)."""
    fig.savefig(out / name)
    return name


def write_json(out: Path, name: str, payload: dict) -> str:
    """Write ``payload`` (numpy values converted) as ``out/name``; returns ``name``."""

    def conv(o):
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(type(o).__name__)

    (out / name).write_text(json.dumps(payload, indent=2, default=conv) + "\n")
    return name


def run_analysis(cfg: Any, body: Callable[[Any, Path], dict]) -> dict:
    """``body(cfg, folder)`` on one torch thread, writing into a temporary folder that replaces
    ``cfg.out`` when it succeeds (:func:`gridfield.outdir.write_dir_atomically`); returns the payload."""
    result: dict = {}
    with single_thread():
        write_dir_atomically(cfg.out, lambda d: result.update(body(cfg, d)))
    return result


DECODERS = ("identity", "linear", "mlp")


def check_decoder(decoder: str, option: str = "--decoder") -> None:
    """Raise :class:`InputError` for a decoder name the analyses cannot build."""
    if decoder not in DECODERS:
        raise InputError(f"{option}: unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")


def check_models(models: tuple[str, ...]) -> None:
    """Raise :class:`InputError` for unknown model names."""
    bad = [m for m in models if m not in DEFAULT_MODELS]
    if bad or not models:
        raise InputError(f"unknown or empty models {bad or list(models)}; choose from {list(DEFAULT_MODELS)}")
