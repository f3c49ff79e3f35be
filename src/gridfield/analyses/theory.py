"""Analysis (d), ``gridfield gtk-theory``: theory vs. practice.

1. Theorem 1: training curves predicted from ``G`` vs. actual gradient descent on the grid features
   (decoder frozen), per model, and per frequency for the first model.
2. Theorem 2: GTK drift ``||G(t) - G(0)||_F / ||G(0)||_F`` during Adam training (all parameters),
   per model, with an identity, a (trained) linear and an MLP decoder.
3. Theorem 3: the (trace-normalized) bound at initialization vs. the measured hold-out error after
   fitting an image, across models.
4. Theorem 1 beyond linear models (:mod:`gridfield.analyses.theory_mlp`): predicted (empirical NTK wrt
   all parameters at init) vs. actual full-batch GD of grids with MLP decoders and of a Fourier-feature
   MLP, at several widths, with GD on the explicitly linearized model as a check and the drift measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gridfield.analyses import common as ac
from gridfield.analyses import theory_mlp as tm
from gridfield.data.images import load_image, pixel_coords
from gridfield.errors import InputError
from gridfield.gtk.bound import bound
from gridfield.gtk.drift import drift
from gridfield.gtk.dynamics import frequency_energy, predict_dynamics
from gridfield.gtk.engine import gtk
from gridfield.tasks.image import fit_image, holdout_mask
from gridfield.training import check_options, seed_everything

DRIFT_DECODERS = {"identity": ":", "linear": "-", "mlp": "--"}  # decoder -> line style of the drift plot


@dataclass
class TheoryConfig:
    """Predicted vs. actual training, GTK drift during Adam, bound vs. hold-out error."""

    out: Path = Path("runs/gtk_theory")
    """Output folder (PNG figures + gtk_theory.json)."""
    models: tuple[str, ...] = ac.DEFAULT_MODELS
    """Models to compare (2D)."""
    side: int = 12
    """Lattice side for the dynamics and drift experiments (side**2 points)."""
    gd_steps: int = 100
    """Gradient-descent steps (step 0.5 / lambda_max(G), loss 1/2 ||O - Y||^2)."""
    adam_steps: int = 60
    """Adam steps of the drift experiment."""
    drift_every: int = 20
    """Measure the drift every this many steps."""
    image: str = "astronaut"
    """Image of the bound-vs-hold-out experiment."""
    image_size: int = 24
    """Longer side of that image."""
    fit_models: tuple[str, ...] = ac.FIT_MODELS
    """Models of the image fits."""
    holdout: float = 0.25
    """Fraction of pixels held out."""
    fit_steps: int = 150
    """Adam steps of the image fits."""
    mlp_models: tuple[str, ...] = tm.DEFAULT_MLP_MODELS
    """Models of the Theorem-1-for-MLPs part: line-up grids with an MLP decoder, and ``ffmlp`` (a plain
    Fourier-feature MLP); on the same lattice and target as the first part."""
    mlp_widths: tuple[int, ...] = (16, 64, 256)
    """Hidden width of those MLPs (2 hidden ReLU layers, PyTorch's default init)."""
    mlp_steps: int = 100
    """Full-batch gradient-descent steps of that part (every parameter trained)."""
    mlp_eta: float = 0.5
    """Its step in units of 1 / lambda_max(G(0)), G the empirical NTK wrt all parameters (< 2: stable for
    a fixed kernel)."""
    mlp_feature_scale: float = 1.0
    """Grid features drawn U(-s, s) there. The line-up's own 1e-4 makes the MLP's input ~0: the NTK is
    then its constant mode (lambda_2 / lambda_1 <= 4e-4), and GD at that step fits little but the mean."""
    mlp_drift_every: int = 25
    """Measure the drift of that part every this many steps."""
    seed: int = 0
    """Initialization seed."""


def target_signal(x: torch.Tensor) -> torch.Tensor:
    """A 2D test signal with low and high frequencies: ``[n, 2]`` -> ``[n, 1]``."""
    return (torch.sin(np.pi * x[:, :1]) * torch.cos(np.pi * x[:, 1:]) + 0.5 * torch.sin(5 * np.pi * x[:, :1])
            + 0.3 * torch.cos(7 * np.pi * (x[:, :1] + x[:, 1:])))


def gd_vs_prediction(field, x, y, steps: int) -> dict:
    """Actual GD on the grid features (decoder frozen) vs. Theorem 1's prediction from ``G(0)``.

    Step ``eta = 0.5 / lambda_max(G(0))`` (stable for a fixed kernel). A nonlinear model can still
    diverge as its kernel grows; then the actual curve stops at the last finite step (``diverged_at``).
    """
    for p in field.other_parameters().values():
        p.requires_grad_(False)
    g = gtk(field, x).dense()
    eta = 0.5 / np.linalg.eigvalsh(g).max()
    with torch.no_grad():
        o0 = field(x).clone()
    pred = predict_dynamics(g, y, o0, eta=eta, steps=steps)
    w = list(field.grid_parameters().values())
    outs, diverged = [o0.numpy()], None
    for step in range(steps):
        grads = torch.autograd.grad(0.5 * ((field(x) - y) ** 2).sum(), w)
        with torch.no_grad():
            for p, gr in zip(w, grads):
                p -= eta * gr
            o = field(x).numpy()
        if not np.isfinite(o).all() or np.abs(o).max() > 1e6:
            diverged = step + 1
            break
        outs.append(o)
    actual = np.stack(outs)
    loss = 0.5 * ((actual - y.numpy()[None]) ** 2).sum((1, 2))
    err = np.abs(pred.outputs[: len(actual)] - actual).max() / np.abs(actual).max()
    return {"eta": eta, "pred": pred, "actual": actual, "loss": loss, "diverged_at": diverged,
            "max_rel_output_error": float(err)}


def run(cfg: TheoryConfig) -> dict:
    """Run the three experiments, plot and save; returns the JSON payload. (Small tensor work on one torch thread.)"""
    return ac.run_analysis(cfg, _run)


def _run(cfg: TheoryConfig, out: Path) -> dict:
    ac.check_models(cfg.models)
    ac.check_models(cfg.fit_models)
    check_options(("--side", cfg.side, 4 <= cfg.side <= 48, "in [4, 48]"),
                  *((f"--{k.replace('_', '-')}", getattr(cfg, k), getattr(cfg, k) >= 1, ">= 1")
                    for k in ("gd_steps", "adam_steps", "drift_every", "fit_steps")),
                  ("--image-size", cfg.image_size, cfg.image_size >= 8, ">= 8"),
                  ("--holdout", cfg.holdout, 0 < cfg.holdout < 1, "in (0, 1)"))
    _check_mlp_options(cfg)
    shape = (cfg.side, cfg.side)
    x = ac.lattice(shape)
    y = target_signal(x)
    fields, skipped = ac.lineup(cfg.models, 2, "linear", seed=cfg.seed)
    gd = {n: gd_vs_prediction(f, x, y, cfg.gd_steps) for n, f in fields.items()}
    drifts = {}
    for dec in DRIFT_DECODERS:
        for n, f in ac.lineup(cfg.models, 2, dec, seed=cfg.seed)[0].items():
            yy = y.repeat(1, f.out_dim) if dec == "identity" else y
            drifts[(n, dec)] = drift(f, x, yy, steps=cfg.adam_steps, every=cfg.drift_every, lr=1e-2, seed=cfg.seed)
    bounds = _bound_vs_holdout(cfg)
    mlp = tm.sweep(cfg.mlp_models, cfg.mlp_widths, x, y, cfg.mlp_steps, cfg.mlp_eta, cfg.mlp_drift_every,
                   cfg.mlp_feature_scale, seed=cfg.seed)
    files = _plots(out, gd, drifts, bounds, shape)
    files["dynamics_mlp"] = _plot_mlp(out, mlp, cfg.mlp_widths)
    payload = {
        "config": {k: str(v) for k, v in vars(cfg).items()}, "skipped": skipped,
        "gradient_descent": {n: {"eta": r["eta"], "max_rel_output_error": r["max_rel_output_error"],
                                 "diverged_at": r["diverged_at"],
                                 "loss_actual": r["loss"], "loss_predicted": r["pred"].loss} for n, r in gd.items()},
        "drift": {f"{n}/{d}": {"steps": t.steps, "drift": t.drift, "loss": t.loss} for (n, d), t in drifts.items()},
        "bound_vs_holdout": bounds,
        "theorem1_mlp": {"eta": f"{cfg.mlp_eta} / lambda_max(G(0)), G wrt all parameters",
                         "feature_scale": cfg.mlp_feature_scale, "steps": cfg.mlp_steps,
                         "runs": {f"{m}/width{w}": r.summary(shape) for (m, w), r in mlp.items()}},
        "figures": files,
    }
    payload["json"] = ac.write_json(out, "gtk_theory.json", payload)
    print(f"gtk-theory: wrote {len(files)} figures and gtk_theory.json to {cfg.out}")
    return payload


def _check_mlp_options(cfg: TheoryConfig) -> None:
    """Raise :class:`InputError` for a bad option of the Theorem-1-for-MLPs part."""
    bad = [m for m in cfg.mlp_models if m not in tm.MLP_MODELS]
    if bad or not cfg.mlp_models:
        raise InputError(f"--mlp-models: unknown or empty models {bad or list(cfg.mlp_models)}; choose from "
                         f"{list(tm.MLP_MODELS)}")
    widths = cfg.mlp_widths
    check_options(("--mlp-widths", list(widths), bool(widths) and all(1 <= w <= 4096 for w in widths)
                   and len(set(widths)) == len(widths), "distinct widths in [1, 4096]"),
                  ("--mlp-steps", cfg.mlp_steps, cfg.mlp_steps >= 1, ">= 1"),
                  ("--mlp-drift-every", cfg.mlp_drift_every, cfg.mlp_drift_every >= 1, ">= 1"),
                  ("--mlp-eta", cfg.mlp_eta, 0 < cfg.mlp_eta < 2, "in (0, 2) (units of 1 / lambda_max)"),
                  ("--mlp-feature-scale", cfg.mlp_feature_scale, 0 < cfg.mlp_feature_scale < 1e3, "in (0, 1e3)"))


def _bound_vs_holdout(cfg: TheoryConfig) -> dict:
    """Per model: trace-normalized bound of ``G(0)`` on the training pixels (targets ``y - O(0)``)
    and the hold-out MSE after fitting."""
    img = load_image(cfg.image, max_size=cfg.image_size)
    h, w, c = img.shape
    xs, ys = pixel_coords(h, w).double(), img.reshape(-1, c).double()
    res = {}
    for n, f in ac.lineup(cfg.fit_models, 2, "linear", out_dim=c, seed=cfg.seed)[0].items():
        test = holdout_mask(h, w, cfg.holdout, "random", seed_everything(cfg.seed))  # fit_image's own mask
        with torch.no_grad():
            r0 = ys[~test] - f(xs[~test])
        b = bound(gtk(f, xs[~test]), r0)
        fit = fit_image(f.float(), img, steps=cfg.fit_steps, lr_grid=5e-2, lr_other=1e-2, holdout=cfg.holdout,
                        seed=cfg.seed, progress=False, eval_every=cfg.fit_steps)
        res[n] = {"bound": b.value, "bound_normalized": b.normalized, "lambda_min": b.lambda_min,
                  "singular": b.singular, "ridge": b.ridge, "note": b.note, "test_psnr": fit.metrics["test_psnr"],
                  "test_mse": float(10 ** (-fit.metrics["test_psnr"] / 10)), "train_psnr": fit.metrics["psnr"]}
    return res


def _plots(out: Path, gd: dict, drifts: dict, bounds: dict, shape) -> dict:
    from matplotlib import colormaps

    fig, ax = ac.figure(cols=2, width=4.6)
    for n, r in gd.items():
        c = ac.model_color(n)
        ax[0, 0].semilogy(r["loss"], color=c, label=f"{n} actual")
        ax[0, 0].semilogy(r["pred"].loss, color=c, ls="--", label=f"{n} predicted")
    ax[0, 0].set_xlabel("gradient-descent step")
    ax[0, 0].set_ylabel("loss 1/2 ||O - Y||^2")
    ax[0, 0].legend(fontsize=7, ncol=2)
    first = next(iter(gd))
    r = gd[first]
    rad, e_pred = r["pred"].per_frequency(shape)
    _, e_act = frequency_energy(r["actual"] - r["pred"].targets[None], shape)  # actual may stop early
    for k, ring in enumerate([1, 3, 5, 7]):
        if ring in rad:
            i = int(np.where(rad == ring)[0][0])
            col = colormaps["viridis"](k / 4)  # not the model colours: these are frequencies
            ax[0, 1].semilogy(e_act[:, i], color=col, label=f"|omega|={ring} actual")
            ax[0, 1].semilogy(e_pred[:, i], color=col, ls="--", label=f"|omega|={ring} predicted")
    ax[0, 1].set_xlabel("gradient-descent step")
    ax[0, 1].set_ylabel(f"residual energy per frequency ring ({first})")
    ax[0, 1].legend(fontsize=7)
    fig.suptitle("Theorem 1: predicted (dashed) vs actual (solid) gradient descent")
    files = {"dynamics": ac.save(fig, out, "gtk_dynamics.png")}
    fig, ax = ac.figure(cols=1, width=8.0, height=4.0)
    for (n, dec), t in drifts.items():
        ax[0, 0].semilogy(t.steps, np.maximum(t.drift, 1e-17), color=ac.model_color(n),
                          ls=DRIFT_DECODERS[dec], marker="o", ms=3, label=f"{n}, {dec} decoder")
    ax[0, 0].set_xlabel("Adam step")
    ax[0, 0].set_ylabel("||G(t) - G(0)||_F / ||G(0)||_F")
    ax[0, 0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax[0, 0].set_title("Theorem 2: GTK drift during Adam, all parameters trained (0 drawn at 1e-17)")
    files["drift"] = ac.save(fig, out, "gtk_drift.png")
    fig, ax = ac.figure(cols=1, width=5.0, height=3.8)
    for n, b in bounds.items():
        ax[0, 0].scatter(b["bound_normalized"], b["test_mse"], color=ac.model_color(n), s=40, label=n)
    ax[0, 0].set_xlabel("bound B at init (G trace-normalized, targets y - O(0))")
    ax[0, 0].set_ylabel("hold-out MSE after fitting")
    ax[0, 0].legend()
    ax[0, 0].set_title("Theorem 3: bound vs measured hold-out error")
    files["bound_vs_holdout"] = ac.save(fig, out, "gtk_bound_vs_holdout.png")
    return files


def _plot_mlp(out: Path, runs: dict, widths: tuple[int, ...]) -> str:
    """Theorem 1 for MLPs: loss curves per width and the final gap vs drift (``gtk_dynamics_mlp.png``)."""
    fig, ax = ac.figure(cols=len(widths) + 1, width=4.2)
    tm.plot(ax[0, :-1], ax[0, -1], runs, tuple(widths), ac.model_color)
    fig.suptitle("Theorem 1 beyond linear models: empirical NTK at init (all parameters) vs actual GD")
    return ac.save(fig, out, "gtk_dynamics_mlp.png")
