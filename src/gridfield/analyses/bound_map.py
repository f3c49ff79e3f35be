"""Analysis (b), ``gridfield gtk-bound-map``: the two-point bound map ``Y^T G^-1 Y`` per model.

Two inputs ``x1, x2`` give a 2x2 GTK per model (trace-normalized, so models compare on one scale);
``Y = (Y1, Y2)`` sweeps ``[-1, 1]^2``; the map of ``Y^T G^-1 Y`` (the square of the bound up to
``2/n``) is averaged over random initializations, and differences to the first model are shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gridfield import memory
from gridfield.analyses import common as ac
from gridfield.errors import InputError
from gridfield.gtk.engine import gtk
from gridfield.training import check_options, finite


@dataclass
class BoundMapConfig:
    """Two-point bound maps per model, averaged over seeds."""

    out: Path = Path("runs/gtk_bound_map")
    """Output folder (PNG figures + gtk_bound_map.json)."""
    models: tuple[str, ...] = ac.DEFAULT_MODELS
    """Models to compare (2D inputs)."""
    x1: tuple[float, float] = (-0.05, 0.02)
    """First input point in [-1, 1]^2."""
    x2: tuple[float, float] = (0.07, -0.04)
    """Second input point in [-1, 1]^2."""
    decoder: str = "mlp"
    """Decoder of every model (an MLP makes the kernel depend on the initialization)."""
    seeds: int = 8
    """Random initializations averaged over."""
    resolution: int = 101
    """Samples per axis of the Y square."""
    ridge: float = 1e-6
    """Relative ridge (times trace(G)/2) used when a 2x2 GTK is singular."""


def two_point_quadratic(g: np.ndarray, ys: np.ndarray, ridge: float) -> tuple[np.ndarray, bool]:
    """``Y^T G^-1 Y`` for every row of ``ys`` ``[k, 2]``; ridge ``ridge * trace(G)/2`` if ``G`` is singular."""
    lam = np.linalg.eigvalsh(g)
    singular = lam[0] <= 1e-10 * lam[-1]
    gi = np.linalg.inv(g + (ridge * np.trace(g) / 2 if singular else 0.0) * np.eye(2))
    return np.einsum("ki,ij,kj->k", ys, gi, ys), bool(singular)


def run(cfg: BoundMapConfig) -> dict:
    """Compute, plot and save; returns the JSON payload. (Small tensor work on one torch thread.)"""
    return ac.run_analysis(cfg, _run)


def _run(cfg: BoundMapConfig, out: Path) -> dict:
    ac.check_models(cfg.models)
    ac.check_decoder(cfg.decoder)
    check_options(("--seeds", cfg.seeds, cfg.seeds >= 1, ">= 1"),
                  ("--resolution", cfg.resolution, cfg.resolution >= 3, ">= 3"),
                  ("--ridge", cfg.ridge, finite(cfg.ridge) and cfg.ridge > 0, "finite and > 0"))
    for option, p in (("--x1", cfg.x1), ("--x2", cfg.x2)):
        if len(p) != 2 or not all(finite(v) and -1 <= v <= 1 for v in p):
            raise InputError(f"{option} {tuple(p)} is not finite or lies outside the domain [-1, 1]^2; "
                             "give a point in [-1, 1]^2")
    # the Y square (float64 [R^2, 2]), the quadratic form and one map per model, figures
    memory.guard(cfg.resolution**2 * 8 * (4 + 2 * len(cfg.models)), f"the {cfg.resolution} x {cfg.resolution} "
                 "bound maps", f"--resolution {cfg.resolution}")
    pts = torch.tensor([cfg.x1, cfg.x2], dtype=torch.float64)
    v = np.linspace(-1, 1, cfg.resolution)
    ys = np.stack(np.meshgrid(v, v, indexing="xy"), -1).reshape(-1, 2)  # (Y1, Y2), Y1 along x
    maps, info = {}, {}
    for seed in range(cfg.seeds):
        fields, skipped = ac.lineup(cfg.models, 2, cfg.decoder, seed=seed)
        for name, field in fields.items():
            g = gtk(field, pts).dense()  # validates the points
            g = g / (np.trace(g) / 2)
            q, singular = two_point_quadratic(g, ys, cfg.ridge)
            maps[name] = maps.get(name, 0) + q.reshape(cfg.resolution, cfg.resolution) / cfg.seeds
            rec = info.setdefault(name, {"G_normalized": [], "singular_seeds": 0})
            rec["G_normalized"].append(g.tolist())
            rec["singular_seeds"] += int(singular)
    for name, m in maps.items():
        info[name].update(mean_over_square=float(m.mean()), max_over_square=float(m.max()),
                          correlation_mean=float(np.mean([gg[0][1] for gg in info[name]["G_normalized"]])))
    files = _plots(out, maps, v, cfg)
    payload = {"config": {k: str(val) for k, val in vars(cfg).items()}, "skipped": skipped,
               "normalization": "G / (trace(G)/2)", "models": info, "figures": files}
    payload["json"] = ac.write_json(out, "gtk_bound_map.json", payload)
    print(f"gtk-bound-map: wrote {len(files)} figures and gtk_bound_map.json to {cfg.out}")
    return payload


def _plots(out: Path, maps: dict, v: np.ndarray, cfg: BoundMapConfig) -> dict:
    names = list(maps)
    vmax = max(m.max() for m in maps.values())
    fig, ax = ac.figure(cols=len(names), width=3.2, height=3.0)
    ext = [v[0], v[-1], v[0], v[-1]]
    for a, n in zip(ax[0], names):
        im = a.imshow(maps[n], origin="lower", extent=ext, cmap="magma", vmin=0, vmax=vmax)
        a.set_title(n, color=ac.model_color(n))
        a.set_xlabel("Y1")
        a.set_ylabel("Y2")
    fig.colorbar(im, ax=list(ax[0]), shrink=0.8, label="Y^T G^-1 Y (G trace-normalized)")
    fig.suptitle(f"Two-point bound map, x1={cfg.x1}, x2={cfg.x2}, mean over {cfg.seeds} seeds")
    files = {"maps": ac.save(fig, out, "gtk_bound_map.png")}
    if len(names) > 1:
        ref = names[0]
        diffs = {n: maps[n] - maps[ref] for n in names[1:]}
        lim = max(np.abs(d).max() for d in diffs.values()) or 1.0
        fig, ax = ac.figure(cols=len(diffs), width=3.2, height=3.0)
        for a, (n, d) in zip(ax[0], diffs.items()):
            im = a.imshow(d, origin="lower", extent=ext, cmap="RdBu_r", vmin=-lim, vmax=lim)
            a.set_title(f"{n} - {ref}", color=ac.model_color(n))
            a.set_xlabel("Y1")
            a.set_ylabel("Y2")
        fig.colorbar(im, ax=list(ax[0]), shrink=0.8, label="difference of Y^T G^-1 Y")
        files["differences"] = ac.save(fig, out, "gtk_bound_map_differences.png")
    return files
