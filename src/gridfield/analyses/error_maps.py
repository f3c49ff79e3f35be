"""Analysis (c), ``gridfield gtk-error-maps``: ``|prediction - truth|`` of each model fitted to one
image, on one colour scale across models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gridfield.analyses import common as ac
from gridfield.data.images import load_image
from gridfield.tasks.image import fit_image, render_image
from gridfield.training import check_options, finite


@dataclass
class ErrorMapsConfig:
    """Fit every model to one image and draw its error map (same colour scale for all)."""

    out: Path = Path("runs/gtk_error_maps")
    """Output folder (gtk_error_maps.png + gtk_error_maps.json)."""
    image: str = "astronaut"
    """Image file or built-in name."""
    max_size: int = 48
    """Longer image side after downscaling."""
    models: tuple[str, ...] = ac.FIT_MODELS
    """Models to compare (2D)."""
    decoder: str = "linear"
    """Decoder of every model."""
    steps: int = 200
    """Adam steps (full batch)."""
    lr_grid: float = 5e-2
    """Learning rate of the grid features."""
    lr_other: float = 1e-2
    """Learning rate of decoder and kernel parameters."""
    seed: int = 0
    """Initialization seed."""


def fit_models(cfg, img, holdout: float = 0.0) -> dict:
    """Fit each model of ``cfg.models`` to ``img`` ``[H, W, C]``: ``{name: (field, metrics, prediction)}``."""
    fields, skipped = ac.lineup(cfg.models, 2, cfg.decoder, out_dim=img.shape[2], seed=cfg.seed)
    out = {}
    for name, field in fields.items():
        field = field.float()
        res = fit_image(field, img, steps=cfg.steps, lr_grid=cfg.lr_grid, lr_other=cfg.lr_other, holdout=holdout,
                        seed=cfg.seed, progress=False, eval_every=cfg.steps)
        with torch.no_grad():
            pred = render_image(res.field, img.shape[0], img.shape[1], clamp=True)
        out[name] = (res.field, res.metrics, pred)
    return out, skipped


def run(cfg: ErrorMapsConfig) -> dict:
    """Fit, plot and save; returns the JSON payload. (Small tensor work on one torch thread.)"""
    return ac.run_analysis(cfg, _run)


def _run(cfg: ErrorMapsConfig, out: Path) -> dict:
    ac.check_models(cfg.models)
    ac.check_decoder(cfg.decoder)
    check_options(("--steps", cfg.steps, cfg.steps >= 1, ">= 1"),
                  ("--max-size", cfg.max_size, cfg.max_size >= 8, ">= 8"),
                  ("--lr-grid", cfg.lr_grid, finite(cfg.lr_grid) and cfg.lr_grid > 0, "finite and > 0"),
                  ("--lr-other", cfg.lr_other, finite(cfg.lr_other) and cfg.lr_other > 0, "finite and > 0"))
    img = load_image(cfg.image, max_size=cfg.max_size)
    fits, skipped = fit_models(cfg, img)
    errs = {n: (p - img).abs().mean(-1).numpy() for n, (_, _, p) in fits.items()}
    vmax = float(max(np.percentile(e, 99.5) for e in errs.values()))
    fig, ax = ac.figure(cols=len(errs) + 1, width=3.0, height=3.0)
    ax[0, 0].imshow(img.numpy().squeeze(), cmap="gray" if img.shape[2] == 1 else None)
    ax[0, 0].set_title("target")
    for a, (n, e) in zip(ax[0, 1:], errs.items()):
        im = a.imshow(e, cmap="inferno", vmin=0, vmax=vmax)
        a.set_title(f"{n}: {fits[n][1]['psnr']:.2f} dB", color=ac.model_color(n))
    for a in ax[0]:
        a.set_xlabel("column (pixels)")
        a.set_ylabel("row (pixels)")
    fig.colorbar(im, ax=list(ax[0, 1:]), shrink=0.8, label="|prediction - truth| (mean over channels)")
    fig.suptitle(f"Error maps after {cfg.steps} Adam steps, {img.shape[0]}x{img.shape[1]} {cfg.image}")
    payload = {"config": {k: str(v) for k, v in vars(cfg).items()}, "skipped": skipped, "colour_scale_max": vmax,
               "models": {n: {"psnr": m["psnr"], "mean_abs_error": float(errs[n].mean()),
                              "train_seconds": m["train_seconds"]} for n, (_, m, _) in fits.items()},
               "figures": {"error_maps": ac.save(fig, out, "gtk_error_maps.png")}}
    payload["json"] = ac.write_json(out, "gtk_error_maps.json", payload)
    print(f"gtk-error-maps: wrote gtk_error_maps.png and gtk_error_maps.json to {cfg.out}")
    return payload
