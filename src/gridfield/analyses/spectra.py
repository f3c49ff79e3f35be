"""Analysis (a), ``gridfield gtk-spectra``: GTK heat maps, Fourier and eigen spectra of several models
on the same 1D and 2D lattices (at initialization, linear decoder, GTK wrt the grid features)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gridfield.analyses import common as ac
from gridfield.gtk.engine import gtk
from gridfield.gtk.spectra import eigenspectrum, fourier_spectrum
from gridfield.training import check_options


@dataclass
class SpectraConfig:
    """GTK heat maps and spectra on a 1D and a 2D lattice."""

    out: Path = Path("runs/gtk_spectra")
    """Output folder (PNG figures + gtk_spectra.json)."""
    models: tuple[str, ...] = ac.DEFAULT_MODELS
    """Models to compare (those that do not support 1D are skipped there)."""
    n1d: int = 256
    """Points of the 1D lattice."""
    side2d: int = 32
    """Side of the 2D lattice (side2d**2 points)."""
    decoder: str = "linear"
    """Decoder of every model (identity, linear, mlp)."""
    seed: int = 0
    """Initialization seed."""


def _one(field, shape):
    x = ac.lattice(shape)
    g = gtk(field, x, implementation="structured")
    fs, spec = fourier_spectrum(g, shape), eigenspectrum(g, dense_limit=4096)
    s = float(g.diagonal().mean())
    return g, s, fs, spec


def run(cfg: SpectraConfig) -> dict:
    """Compute, plot and save; returns the JSON payload. (Small tensor work on one torch thread.)"""
    return ac.run_analysis(cfg, _run)


def _run(cfg: SpectraConfig, out: Path) -> dict:
    ac.check_models(cfg.models)
    ac.check_decoder(cfg.decoder)
    check_options(("--n1d", cfg.n1d, 4 <= cfg.n1d <= 4096, "in [4, 4096] (the 1D heat map is the dense n1d^2 GTK)"),
                  ("--side2d", cfg.side2d, 4 <= cfg.side2d <= 64, "in [4, 64]"))
    payload: dict = {"config": {k: str(v) for k, v in vars(cfg).items()}, "normalization":
                     "G / (trace(G)/n): unit mean diagonal", "lattices": {}}
    figs = {}
    for dim, shape in ((1, (cfg.n1d,)), (2, (cfg.side2d, cfg.side2d))):
        fields, skipped = ac.lineup(cfg.models, dim, cfg.decoder, seed=cfg.seed)
        res = {}
        for name, field in fields.items():
            t0 = time.perf_counter()
            g, s, fs, spec = _one(field, shape)
            res[name] = dict(g=g, s=s, fs=fs, spec=spec, seconds=time.perf_counter() - t0)
        figs.update(_plots(out, dim, shape, res))
        payload["lattices"][f"{dim}d"] = {
            "shape": list(shape), "skipped": skipped,
            "models": {n: {"n_params": r["g"].n_params, "mean_diag": r["s"], "seconds": r["seconds"],
                           "condition_number": r["spec"].condition_number,
                           "effective_rank": r["spec"].effective_rank,
                           "lambda_max_normalized": r["spec"].lambda_max / r["s"],
                           "lambda_min_normalized": r["spec"].lambda_min / r["s"],
                           "fourier_radius": r["fs"].radius, "fourier_normalized": r["fs"].radial / r["s"]}
                       for n, r in res.items()},
        }
    payload["figures"] = figs
    payload["json"] = ac.write_json(out, "gtk_spectra.json", payload)
    print(f"gtk-spectra: wrote {len(figs)} figures and gtk_spectra.json to {cfg.out}")
    return payload


def _plots(out: Path, dim: int, shape, res: dict) -> dict:
    n = len(res)
    fig, ax = ac.figure(cols=n, width=3.2, height=3.0)
    for a, (name, r) in zip(ax[0], res.items()):
        if dim == 1:
            img = r["g"].dense() / r["s"]
            x = ac.lattice(shape)[:, 0].numpy()
            im = a.imshow(img, cmap="viridis", extent=[x[0], x[-1], x[-1], x[0]])
            a.set_xlabel("x_j")
            a.set_ylabel("x_i")
        else:
            centre = (shape[0] // 2) * shape[1] + shape[1] // 2
            row = np.asarray(r["g"].matrix[centre].todense()).reshape(shape) / r["s"]
            im = a.imshow(row, cmap="viridis", origin="lower", extent=[-1, 1, -1, 1])
            a.set_xlabel("x")
            a.set_ylabel("y")
        a.set_title(name, color=ac.model_color(name))
        a.figure.colorbar(im, ax=a, shrink=0.8, label="G / mean diag")
    fig.suptitle("GTK on a 1D lattice (full matrix)" if dim == 1 else "GTK row of the centre point, 2D lattice")
    files = {f"heatmap_{dim}d": ac.save(fig, out, f"gtk_heatmap_{dim}d.png")}
    fig, ax = ac.figure(cols=2, width=4.5)
    for name, r in res.items():
        c = ac.model_color(name)
        ax[0, 0].semilogy(r["fs"].radius, np.maximum(r["fs"].radial / r["s"], 1e-16), color=c, label=name)
        lam = np.maximum(r["spec"].eigenvalues / r["s"], 1e-16)
        ax[0, 1].loglog(np.arange(1, len(lam) + 1), lam, color=c, label=name)
    ax[0, 0].set_xlabel("frequency |omega| (cycles across the lattice)" + (", radial mean" if dim == 2 else ""))
    ax[0, 0].set_ylabel("S(omega) / mean diag (convergence rate)")
    ax[0, 1].set_xlabel("eigenvalue index")
    ax[0, 1].set_ylabel("eigenvalue / mean diag")
    for a in ax[0]:
        a.legend()
        a.grid(alpha=0.3)
    fig.suptitle(f"GTK spectra, {dim}D lattice {'x'.join(map(str, shape))}")
    files[f"spectra_{dim}d"] = ac.save(fig, out, f"gtk_spectra_{dim}d.png")
    return files
