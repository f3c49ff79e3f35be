"""``gridfield gtk-ranking``: do tangent-kernel quantities at initialisation rank models by hold-out PSNR?

For every model of a line-up at matched parameter counts (dense, hash, planes sum and product, MulFAGrid
stable and paper form on the hash layout, a Fourier-feature MLP, an MFN; :data:`MODELS`), every image
(a ``size x size`` luminance crop, half of the pixels held out at random) and every seed (the
initialisation and the hold-out mask), two kernels are taken at initialisation on the float64 model:

* ``ntk``: the empirical NTK wrt **all** trainable parameters (``gtk_fn(model, wrt="all")``), the one
  definition that every model has (the MLPs have no grid);
* ``gtk``: the paper's GTK wrt the **grid features** only (``gtk_fn(model, wrt="grid")``), grid models only.

From each kernel on the training pixels: the trace-normalized Theorem-3 bound (``Bound.normalized``
of :func:`gridfield.gtk.bound` with its default regularization, and with a fixed ridge), the effective
rank, the top-k energy, the spectral decay exponent, the high-frequency share of its Fourier spectrum
(on the full pixel lattice) and the kernel-target alignment (:data:`QUANTITIES`). Then the model is
trained (``fit_image``, full batch, fixed steps, the image presets' learning rates) and its hold-out PSNR
measured. Spearman rank correlations of each quantity with the hold-out PSNR (per image, mean per image,
per (image, seed) block, pooled), with bootstrap intervals resampling the images and the seeds
(:func:`correlations`).

The generic pieces (image crops, kernel quantities, Spearman and the bootstrap, aggregation, tables) are
shared with ``benchmarks/mulfagrid_gtk.py`` and ``benchmarks/gtk_models.py`` (the full Kodak run).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from gridfield.analyses import common as ac
from gridfield.data.images import load_image, pixel_coords
from gridfield.errors import InputError
from gridfield.gtk import bound, eigenspectrum, fourier_spectrum, gtk_fn
from gridfield.models import build_field, count_parameters
from gridfield.presets.image import MULFA_HASH_KERNEL, image_lr
from gridfield.tasks.image_fit import fit_image, holdout_mask
from gridfield.training import check_options

#: GTK quantities correlated with hold-out PSNR: key -> (label, sign a theory predicts: Theorem 3 for the
#: bounds, the kernel-target-alignment argument for the alignment; 0 where none does)
QUANTITIES: dict[str, tuple[str, int]] = {
    "bound": ("bound B (targets y - O(0))", -1),
    "bound_centered": ("bound B (targets y - mean y)", -1),
    "bound_ridge": ("bound B (y - mean y, ridge 1e-3)", -1),
    "effective_rank": ("effective rank (sum l)^2 / sum l^2", 0),
    "erank_entropy": ("effective rank exp(H) (library)", 0),
    "topk_energy": ("top-k eigenvalue energy share", 0),
    "decay_exponent": ("spectral decay exponent", 0),
    "hf_fraction": ("high-frequency share of S(omega)", 0),
    "alignment": ("kernel-target alignment", +1),
}
#: kernel key -> (``wrt`` of :func:`gridfield.gtk.gtk_fn`, what it is)
KERNELS: dict[str, tuple[str, str]] = {
    "ntk": ("all", "empirical NTK wrt all trainable parameters (every model)"),
    "gtk": ("grid", "the paper's GTK wrt the grid features (grid models only)"),
}
#: reference rows of the correlation tables that are not kernel quantities
REFERENCE_ROWS = {"train_psnr": "(not GTK) train PSNR", "params": "(not GTK) parameter count"}
#: the hash layout of every hash-based model (the table size and finest level match the budget)
HASH = {"n_levels": 4, "features_per_level": 2, "base_resolution": 8}


@dataclass(frozen=True)
class RankModel:
    """One model of the line-up: ``build_field(model, 2, 1, decoder, ...)`` with ``kwargs``, the
    image-size dependent ``per_size(size)`` kwargs and the size argument ``knob`` matched to the budget
    (``"hash"``: table size and finest level; else the name of one integer argument)."""

    model: str
    what: str
    knob: str
    lr: str
    decoder: str = "linear"
    decoder_kwargs: Mapping = field(default_factory=dict)
    kwargs: Mapping = field(default_factory=dict)
    per_size: Callable[[int], dict] | None = None


#: The line-up. The two MLPs' frequency scales were chosen by hold-out PSNR on ``camera`` at 64 px (not a
#: benchmark image): MFN input scale 16 / 24 / 32 / 64 / 128 gave 23.5 / 24.2 / 23.7 / 15.6 / 8.2 dB, the
#: Fourier-feature sigma 0.625 / 0.9 / 1.25 / 2.5 / 5 gave 25.3 / 25.3 / 25.5 / 24.2 / 16.4 dB (6K parameters,
#: 500 steps, 2 seeds); the literature's scales (128, and sigma 10 on [0, 1]) fit every training pixel and
#: overfit a 50% hold-out.
MODELS: dict[str, RankModel] = {
    "dense": RankModel("dense", "one dense level of R x R nodes, F = 2, linear decoder", "resolutions", "dense",
                       kwargs={"features_per_level": 2}),
    "hash": RankModel("hash", "hash grid (4 levels, F = 2, base 8), linear decoder", "hash", "hash", kwargs=HASH),
    "hash-mlp": RankModel("hash", "the same hash grid, MLP decoder (one hidden layer of 32)", "hash", "hash",
                          decoder="mlp", decoder_kwargs={"width": 32, "hidden_layers": 1}, kwargs=HASH),
    "planes": RankModel("planes", "line factors u(x) + v(y) (sum) at size/4, size/2, size, MLP decoder 32x1 "
                        "(a linear decoder would make the model additive)", "features_per_level", "planes",
                        decoder="mlp", decoder_kwargs={"width": 32, "hidden_layers": 1}, kwargs={"aggregate": "sum"},
                        per_size=lambda s: {"resolutions": [max(2, s // 4), max(2, s // 2), s]}),
    "planes-product": RankModel("planes", "line factors u(x) * v(y) (K-Planes product) at size/4, size/2, size, "
                                "linear decoder", "features_per_level", "planes", kwargs={"aggregate": "product"},
                                per_size=lambda s: {"resolutions": [max(2, s // 4), max(2, s // 2), s]}),
    "mulfagrid": RankModel("mulfagrid", "MulFAGrid, hash layout (as the hash model), stable form, kernel L = 2, "
                           "width 16, 1 layer (the image presets' kernel), linear decoder", "hash", "mulfagrid",
                           kwargs={**HASH, **MULFA_HASH_KERNEL, "layout": "hash", "resolutions": None,
                                   "form": "stable"}),
    "mulfagrid-paper": RankModel("mulfagrid", "the same MulFAGrid in the paper's form", "hash", "mulfagrid-paper",
                                 kwargs={**HASH, **MULFA_HASH_KERNEL, "layout": "hash", "resolutions": None,
                                         "form": "paper"}),
    "ffmlp": RankModel("ffmlp", "Fourier-feature MLP: 64 Gaussian features, sigma = 1.25 size/64, 3 ReLU layers",
                       "width", "ffmlp", kwargs={"num_features": 64, "depth": 3},
                       per_size=lambda s: {"sigma": 1.25 * s / 64}),
    "mfn": RankModel("mfn", "MFN (FourierNet), 3 multiplicative layers, input scale size/2", "width", "mfn",
                     kwargs={"n_layers": 3}, per_size=lambda s: {"input_scale": s / 2}),
}


# -- models and parameter matching --------------------------------------------------------------------
def build(name: str, size_kwargs: Mapping, size: int, seed: int = 0) -> nn.Module:
    """Model ``name`` of :data:`MODELS` (float32, 2D -> 1 channel) for ``size x size`` images, with its
    matched size arguments ``size_kwargs``, initialised from ``seed``."""
    spec = MODELS[name]
    kw = {**spec.kwargs, **(spec.per_size(size) if spec.per_size else {}), **size_kwargs}
    torch.manual_seed(seed)
    return build_field(spec.model, 2, 1, spec.decoder, decoder_kwargs=dict(spec.decoder_kwargs) or None, **kw)


def closest_to_budget(rows: Iterable[Sequence[dict]], count: Callable[[dict], int], target: int,
                      preference: Callable[[dict], float] = lambda kw: 0.0, tolerance: float = 0.0) -> dict:
    """The candidate ``kw`` whose ``count(kw)`` is closest to ``target``.

    rows: candidates in order of increasing count (a row's walk stops past ``1.5 target``). Counts within
    ``tolerance`` (relative) of the target are equally good; then the smaller ``preference`` wins, then
    the closer count.
    """
    best, best_cost = None, None
    for row in rows:
        for kw in row:
            n = count(kw)
            cost = (max(0.0, abs(n / target - 1) - tolerance), preference(kw), abs(n - target))
            if best_cost is None or cost < best_cost:
                best, best_cost = kw, cost
            if n > 1.5 * target:
                break
    if best is None:
        raise InputError("no size candidates to match the parameter budget")
    return best


def size_rows(knob: str, size: int) -> list[list[dict]]:
    """Candidate size arguments of ``knob`` (rows in increasing parameter count) for ``size`` px images."""
    if knob == "hash":
        return [[{"log2_hashmap_size": t, "finest_resolution": f} for t in range(4, 19)]
                for f in range(max(10, size // 2), 3 * size // 2 + 1, max(1, size // 32))]
    return [[{knob: v} for v in range(2, 1025)]]


def match_budget(name: str, budget: int, size: int) -> dict:
    """Size arguments of model ``name`` with a parameter count within 5% of ``budget`` where possible
    (hash layouts: then the finest level nearest ``0.75 size``, in ``[size/2, 1.5 size]``)."""
    knob = MODELS[name].knob
    pref = (lambda kw: abs(kw["finest_resolution"] - 0.75 * size) / size) if knob == "hash" else (lambda kw: 0.0)
    return closest_to_budget(size_rows(knob, size), lambda kw: count_parameters(build(name, kw, size)), budget,
                             pref, tolerance=0.05)


# -- images and pixels ---------------------------------------------------------------------------------
def prepare_image(src: str | Path, size: int) -> torch.Tensor:
    """``[size, size, 1]`` luminance (``0.299 R + 0.587 G + 0.114 B``) of an image file or built-in name:
    downscaled (anti-aliased) to ``1.5 size`` on the long side, centre crop."""
    img = load_image(str(src), max_size=int(round(1.5 * size)))
    h, w, _ = img.shape
    if min(h, w) < size:
        img = load_image(str(src), max_size=int(round(size * max(h, w) / min(h, w))) + 1)
        h, w, _ = img.shape
    if min(h, w) < size:
        raise InputError(f"image {src} is {h}x{w} px, smaller than the {size}x{size} crop")
    top, left = (h - size) // 2, (w - size) // 2
    crop = img[top : top + size, left : left + size, :3]
    lum = crop @ torch.tensor([0.299, 0.587, 0.114], dtype=crop.dtype) if crop.shape[-1] == 3 else crop[..., 0]
    return lum.unsqueeze(-1).contiguous()


def training_points(h: int, w: int, holdout: float, seed: int, max_points: int) -> torch.Tensor:
    """Indices (row-major pixels) of the training pixels the fit uses (``fit_image``'s mask for ``seed``),
    subsampled without replacement to ``max_points`` (fixed generator) when there are more."""
    test = holdout_mask(h, w, holdout, "random", torch.Generator().manual_seed(seed))
    idx = torch.nonzero(~test).squeeze(1)
    if idx.numel() > max_points:
        keep = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(seed + 12345))[:max_points]
        idx = idx[keep.sort().values]
    return idx


# -- kernel quantities ---------------------------------------------------------------------------------
def _dense(g) -> np.ndarray:
    """A dense ``[n, n]`` float64 array of a :class:`~gridfield.gtk.GTK` or an array."""
    return np.asarray(g.dense() if hasattr(g, "dense") else g, dtype=np.float64)


def trace_normalized_bound(g, y, ridge: float | None = None):
    """The library's bound of ``G / (trace(G)/n)``: ``sqrt(2 mean_c y_c^T G^-1 y_c / n)`` with its default
    regularization, or the fixed ridge ``ridge * trace(G)/n`` when given. Returns the
    :class:`gridfield.gtk.Bound` (its ``normalized`` is the value)."""
    return bound(g, y, ridge=ridge)


def spectrum_measures(eigenvalues: np.ndarray, topk: int) -> dict:
    """Participation-ratio effective rank, top-``topk`` energy share and the decay exponent ``alpha`` of
    ``l_i ~ i^-alpha`` (least squares in log-log over ``i`` in ``[4, n/4]``) of ``eigenvalues``."""
    lam = np.clip(np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1], 0, None)
    lam = lam / lam.sum()
    i = np.arange(1, len(lam) + 1)
    sel = (i >= 4) & (i <= max(8, len(lam) // 4)) & (lam > 0)
    slope = np.polyfit(np.log(i[sel]), np.log(lam[sel]), 1)[0]
    return {"effective_rank": float(lam.sum() ** 2 / (lam**2).sum()), "topk_energy": float(lam[:topk].sum()),
            "decay_exponent": float(-slope)}


def spectrum_quantities(g, topk: int) -> dict:
    """Eigenvalue summaries of a kernel ``g`` ``[n, n]`` (:func:`spectrum_measures` and the library's
    entropy effective rank, from the exact ``eigh`` of :func:`gridfield.gtk.eigenspectrum`)."""
    spec = eigenspectrum(g, dense_limit=8192)
    return {**spectrum_measures(spec.eigenvalues, topk), "erank_entropy": spec.effective_rank}


def hf_share(g, shape: tuple[int, int], cutoff: float) -> float:
    """Share of ``sum_omega S(omega)`` (= trace G) at ``|omega| > cutoff`` cycles per image of the exact
    Fourier spectrum (:func:`gridfield.gtk.fourier_spectrum`) of a kernel ``g`` on the full ``h x w``
    pixel lattice (``[h w, h w]``, row-major)."""
    fs = fourier_spectrum(g, shape)
    r = np.hypot(*np.meshgrid(*fs.freqs, indexing="ij"))
    s = np.clip(fs.values, 0, None)
    return float(s[r > cutoff].sum() / s.sum())


def center_kernel(g) -> np.ndarray:
    """``H G H`` with ``H = I - 1 1^T / n`` (``[n, n]``): the kernel without its constant mode."""
    gd = _dense(g)
    return gd - gd.mean(0, keepdims=True) - gd.mean(1, keepdims=True) + gd.mean()


def alignment(g, y) -> float:
    """Kernel-target alignment ``y^T G y / (||G||_F ||y||^2)`` of centred targets ``y`` ``[n, 1]``."""
    gd = _dense(g)
    yc = np.asarray(y, dtype=np.float64).reshape(-1, 1)
    yc = yc - yc.mean()
    return float((yc.T @ gd @ yc).item() / (np.linalg.norm(gd) * (yc**2).sum()))


def target_quantities(g, y, r0, ridge: float) -> dict:
    """Trace-normalized bounds of a kernel ``g`` ``[n, n]`` for targets ``y`` ``[n, 1]``: of the residual at
    initialisation ``r0 = y - O(0)``, of the centred targets (both with the library's default eigenvalue
    floor; ``floored``: it acted, ``ridge_default``: its relative ridge), and of the centred targets with
    the fixed relative ridge ``ridge``."""
    y = torch.as_tensor(y, dtype=torch.float64)
    yc = y - y.mean()
    b = trace_normalized_bound(g, r0)
    bc = trace_normalized_bound(g, yc)
    br = trace_normalized_bound(g, yc, ridge=ridge)
    return {"bound": b.normalized, "bound_centered": bc.normalized, "bound_ridge": br.normalized,
            "singular": bool(bc.singular), "floored": bool(bc.floored), "ridge_default": bc.ridge,
            "lambda_min_over_mean": b.lambda_min / b.mean_diag}


def lattice_kernels(model: nn.Module, size: int) -> dict[str, np.ndarray]:
    """The kernels of :data:`KERNELS` at the current parameters of (a float64 copy of) ``model`` on the
    full ``size x size`` pixel lattice: ``{"ntk": [n, n], "gtk": [n, n]}`` (``gtk`` for grid models only)."""
    f64 = copy.deepcopy(model).double()
    x = pixel_coords(size, size).double()
    has_grid = bool(getattr(f64, "grid_parameters", dict)())
    return {k: _dense(gtk_fn(f64, wrt=wrt)(x)) for k, (wrt, _) in KERNELS.items() if k == "ntk" or has_grid}


# -- the measurement -----------------------------------------------------------------------------------
@dataclass
class RankingConfig:
    """Tangent-kernel quantities at initialisation against the hold-out PSNR after training, across models."""

    out: Path = Path("runs/gtk_ranking")
    """Output folder (gtk_ranking.png + gtk_ranking.json)."""
    models: tuple[str, ...] = tuple(MODELS)
    """Models of the line-up (at least 3), all at the same parameter budget."""
    images: tuple[str, ...] = ("camera", "astronaut", "coffee")
    """Images (built-in names or files), each as a size x size luminance crop."""
    size: int = 32
    """Side of the square crops (the kernels are size^2 x size^2 on the pixel lattice)."""
    budget: int = 2500
    """Target parameter count of every model (matched within 5% where the sizes allow)."""
    seeds: tuple[int, ...] = (0, 1)
    """Seeds: each sets the initialisation and the hold-out mask."""
    steps: int = 150
    """Full-batch Adam steps of every fit (cosine decay), learning rates of the image presets."""
    holdout: float = 0.5
    """Fraction of the pixels held out at random."""
    ridge: float = 1e-3
    """Fixed relative ridge of the bound_ridge quantity."""
    topk: int = 0
    """k of the top-k energy share (0: n_train / 16)."""
    hf_cutoff: float = 0.0
    """|omega| cutoff of the high-frequency share, cycles per image (0: size / 4)."""
    resamples: int = 500
    """Bootstrap resamples (images and seeds drawn with replacement)."""


def check_config(cfg: RankingConfig) -> None:
    """Raise :class:`InputError` for an option the analysis cannot run with."""
    bad = [m for m in cfg.models if m not in MODELS]
    if bad or len(set(cfg.models)) < 3 or len(set(cfg.models)) != len(cfg.models):
        raise InputError(f"--models: unknown, repeated or fewer than 3 models {bad or list(cfg.models)}; "
                         f"choose at least 3 of {list(MODELS)}")
    check_options(("--images", list(cfg.images), len(cfg.images) >= 1 and len(set(cfg.images)) == len(cfg.images),
                   "at least one image, no repeats"),
                  ("--seeds", list(cfg.seeds), len(cfg.seeds) >= 1 and len(set(cfg.seeds)) == len(cfg.seeds),
                   "at least one seed, no repeats"),
                  ("--size", cfg.size, 8 <= cfg.size <= 64, "in [8, 64] (the kernels are size^2 x size^2)"),
                  ("--budget", cfg.budget, 200 <= cfg.budget <= 200_000, "in [200, 200000]"),
                  ("--steps", cfg.steps, cfg.steps >= 1, ">= 1"),
                  ("--holdout", cfg.holdout, 0.05 <= cfg.holdout <= 0.95, "in [0.05, 0.95]"),
                  ("--ridge", cfg.ridge, math.isfinite(cfg.ridge) and cfg.ridge > 0, "> 0"),
                  ("--topk", cfg.topk, cfg.topk >= 0, ">= 0"),
                  ("--hf-cutoff", cfg.hf_cutoff, math.isfinite(cfg.hf_cutoff) and 0 <= cfg.hf_cutoff < cfg.size,
                   "in [0, size)"),
                  ("--resamples", cfg.resamples, cfg.resamples >= 0, ">= 0"))


def init_kernels(model: nn.Module, cfg: RankingConfig, seed: int) -> dict:
    """The kernels of ``model`` at initialisation on the training pixels of ``seed`` and what of them does
    not depend on the image: ``idx`` (pixels ``[n]``), ``train`` and ``centred`` (``{kernel: G}`` and
    ``{kernel: H G H}``, ``[n, n]``), ``spectra`` (``{kernel: quantities}``) and ``o0`` (``O(0)``, ``[n, 1]``)."""
    s = cfg.size
    kernels = lattice_kernels(model, s)
    idx = training_points(s, s, cfg.holdout, seed, s * s).numpy()
    train = {k: g[np.ix_(idx, idx)] for k, g in kernels.items()}
    topk = cfg.topk or max(1, len(idx) // 16)
    centred = {k: center_kernel(g) for k, g in train.items()}
    spectra = {k: {**spectrum_quantities(g, topk),
                   "hf_fraction": hf_share(center_kernel(kernels[k]), (s, s), cfg.hf_cutoff or s / 4),
                   "effective_rank_raw": spectrum_measures(np.linalg.eigvalsh(train[k]), topk)["effective_rank"]}
               for k, g in centred.items()}
    with torch.no_grad():
        o0 = copy.deepcopy(model).double()(pixel_coords(s, s)[idx].double())
    return {"idx": idx, "train": train, "centred": centred, "spectra": spectra, "o0": o0}


def measure_group(cfg: RankingConfig, name: str, size_kwargs: Mapping, seed: int,
                  images: Mapping[str, torch.Tensor]) -> list[dict]:
    """One cell per image of ``images`` (``[size, size, 1]``) for model ``name`` and ``seed``: the kernel
    quantities at initialisation (``ntk_*``, ``gtk_*``; bounds of ``G``, spectrum summaries, high-frequency
    share and alignment of the centred ``H G H``), then the fit's train and hold-out PSNR."""
    model = build(name, size_kwargs, cfg.size, seed)
    t0 = time.perf_counter()
    init = init_kernels(model, cfg, seed)
    spectrum_seconds = time.perf_counter() - t0
    lr_grid, lr_other = image_lr(MODELS[name].lr)
    rows = []
    for im, img in images.items():
        y = img.reshape(-1, 1)[init["idx"]].double()
        t1 = time.perf_counter()
        q = {f"{k}_{key}": v for k, g in init["train"].items()
             for key, v in {**init["spectra"][k], **target_quantities(g, y, y - init["o0"], cfg.ridge),
                            "alignment": alignment(init["centred"][k], y)}.items()}
        gtk_seconds = spectrum_seconds + time.perf_counter() - t1
        t1 = time.perf_counter()
        fit = fit_image(copy.deepcopy(model), img, steps=cfg.steps, batch_size=None, lr_grid=lr_grid, lr_other=lr_other,
                        holdout=cfg.holdout, seed=seed, progress=False, eval_every=cfg.steps)
        rows.append({"model": name, "image": im, "seed": seed, "params": count_parameters(model), **q,
                     "train_psnr": float(fit.metrics["psnr"]), "test_psnr": float(fit.metrics["test_psnr"]),
                     "n_train": len(init["idx"]), "gtk_seconds": gtk_seconds, "fit_seconds": time.perf_counter() - t1})
    return rows


def measure(cfg: RankingConfig, images: Mapping[str, torch.Tensor], sizes: Mapping[str, Mapping],
            done: Collection[tuple] = (), on_group: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Every (model, image, seed) cell not in ``done`` (``(model, image, seed)`` keys); ``on_group`` gets the
    cells of each (model, seed) as they finish (to save them). Returns the new cells."""
    runs = []
    for seed in cfg.seeds:
        for name in cfg.models:
            todo = {im: img for im, img in images.items() if (name, im, seed) not in done}
            if todo:
                rows = measure_group(cfg, name, sizes[name], seed, todo)
                runs += rows
                if on_group is not None:
                    on_group(rows)
    return runs


# -- statistics ----------------------------------------------------------------------------------------
def spearman(a, b) -> float:
    """Spearman's rho of two sequences over the pairs where both are finite (``nan`` when fewer than 3
    pairs or either is constant). Pearson correlation of the average ranks, as ``scipy.stats.spearmanr``."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    ra, rb = rankdata(a) - (len(a) + 1) / 2, rankdata(b) - (len(b) + 1) / 2
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def bootstrap_interval(stat: Callable[..., np.ndarray], sizes: Sequence[int], resamples: int, seed: int = 0,
                       level: float = 95.0) -> np.ndarray:
    """Percentile intervals ``[k, 2]`` of the ``k`` values of ``stat(*draws)`` over ``resamples`` draws; a
    draw takes ``sizes[a]`` indices in ``range(sizes[a])`` with replacement for each axis ``a``. Draws where
    a value is ``nan`` are left out of that value's interval (``nan`` when none is left)."""
    k = len(np.atleast_1d(stat(*[np.arange(n) for n in sizes])))
    rng = np.random.default_rng(seed)
    boot = np.array([np.atleast_1d(stat(*[rng.integers(0, n, n) for n in sizes])) for _ in range(resamples)],
                    dtype=float).reshape(resamples, k)
    out = np.full((k, 2), np.nan)
    for j in range(k):
        vals = boot[np.isfinite(boot[:, j]), j]
        if len(vals):
            out[j] = np.percentile(vals, [(100 - level) / 2, 100 - (100 - level) / 2])
    return out


def is_bound(q: str) -> bool:
    """Bounds span decades: they are averaged (and drawn) in log."""
    return "bound" in q


def cube(records: Sequence[dict], q: str, key: str, models: Sequence[str], images: Sequence[str],
         seeds: Sequence | None = None, seed_key: str = "seed") -> np.ndarray:
    """``[models, images, seeds]`` array of ``q`` (``log`` for bounds, ``nan`` where missing); ``seeds``
    ``None``: one record per (model, image), a single seed column."""
    out = np.full((len(models), len(images), 1 if seeds is None else len(seeds)), np.nan)
    mi, ii = {m: k for k, m in enumerate(models)}, {m: k for k, m in enumerate(images)}
    si = {0: 0} if seeds is None else {s: k for k, s in enumerate(seeds)}
    for r in records:
        s = 0 if seeds is None else r.get(seed_key)
        v = r.get(q)
        if r[key] in mi and r["image"] in ii and s in si and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[mi[r[key]], ii[r["image"]], si[s]] = (np.log(v) if v > 0 else np.nan) if is_bound(q) else v
    return out


def rank_statistics(qc: np.ndarray, pc: np.ndarray) -> np.ndarray:
    """``[mean per image, pooled, mean per (image, seed) block]`` Spearman rho of a quantity cube ``qc``
    ``[M, I, S]`` against the hold-out PSNR cube ``pc``: per image over the seed means; pooled over all
    (model, image) seed means; per block over the models of one (image, seed)."""
    qm, pm = _nanmean(qc, 2), _nanmean(pc, 2)
    per_image = [spearman(qm[:, i], pm[:, i]) for i in range(qc.shape[1])]
    blocks = [spearman(qc[:, i, s], pc[:, i, s]) for i in range(qc.shape[1]) for s in range(qc.shape[2])]
    return np.array([_nanmean(np.array(per_image)), spearman(qm, pm), _nanmean(np.array(blocks))])


def _nanmean(a: np.ndarray, axis: int | None = None):
    """``np.nanmean`` without the warning for all-``nan`` slices (expected: the MLPs have no grid GTK)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis)


def correlation_summary(qc: np.ndarray, pc: np.ndarray, images: Sequence[str], resample: Sequence[str],
                        resamples: int, seed: int = 0) -> dict:
    """Spearman rho of ``qc`` vs ``pc`` (``[M, I, S]`` cubes, :func:`cube`) per image, their mean, pooled
    and per (image, seed) block (:func:`rank_statistics`), with 95% bootstrap intervals drawing the axes
    ``resample`` (any of ``"model"``, ``"image"``, ``"seed"``) with replacement."""
    axes = [("model", "image", "seed").index(a) for a in resample]

    def stat(*draws):
        q, p = qc, pc
        for a, d in zip(axes, draws):
            q, p = np.take(q, d, axis=a), np.take(p, d, axis=a)
        return rank_statistics(q, p)

    qm, pm = _nanmean(qc, 2), _nanmean(pc, 2)
    per = {im: spearman(qm[:, i], pm[:, i]) for i, im in enumerate(images)}
    val = rank_statistics(qc, pc)
    ci = bootstrap_interval(stat, [qc.shape[a] for a in axes], resamples, seed)
    return {"per_image": per, "mean": float(val[0]), "ci95": ci[0].tolist(), "pooled": float(val[1]),
            "pooled_ci95": ci[1].tolist(), "per_block": float(val[2]), "per_block_ci95": ci[2].tolist()}


def correlations(records: Sequence[dict], quantities: Sequence[str], models: Sequence[str], images: Sequence[str],
                 resample: Sequence[str], resamples: int, seed: int = 0, key: str = "model",
                 seeds: Sequence | None = None, seed_key: str = "seed",
                 signs: Mapping[str, int] | None = None) -> dict:
    """Per quantity of ``quantities``: :func:`correlation_summary` against ``test_psnr`` over ``models``
    (records keyed by ``key``, ``"image"`` and, unless ``seeds`` is ``None``, ``seed_key``), plus the
    ``expected_sign`` from ``signs``."""
    pc = cube(records, "test_psnr", key, models, images, seeds, seed_key)
    out = {}
    for q in quantities:
        qc = cube(records, q, key, models, images, seeds, seed_key)
        out[q] = {**correlation_summary(qc, pc, images, resample, resamples, seed),
                  "expected_sign": (signs or {}).get(q, 0)}
    return out


def aggregate(runs: Sequence[dict], key: str = "model", seed_key: str = "seed") -> list[dict]:
    """One row per (``key``, image): the mean over seeds of every number (geometric mean for the bounds,
    whose values span decades; a flag: ``"k/n"``, in how many seeds it was set), ``seeds`` and
    ``test_psnr_spread`` (max - min hold-out PSNR over the seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r[key], r["image"]), []).append(r)
    out = []
    for (name, im), rs in groups.items():
        row = {key: name, "image": im, "params": rs[0]["params"], "seeds": len(rs)}
        for k, v in rs[0].items():
            if k in row or k == seed_key or not isinstance(v, (int, float)):
                continue
            if isinstance(v, bool):
                row[k] = f"{sum(bool(r[k]) for r in rs)}/{len(rs)}"
                continue
            vals = np.array([r[k] for r in rs], dtype=float)
            row[k] = float(np.exp(np.log(vals).mean()) if is_bound(k) else vals.mean())
        row["test_psnr_spread"] = float(np.ptp([r["test_psnr"] for r in rs]))
        out.append(row)
    return out


def leave_one_out(records: Sequence[dict], q: str, models: Sequence[str], images: Sequence[str],
                  seeds: Sequence | None) -> dict[str, float]:
    """Mean per-image rho of ``q`` vs hold-out PSNR with each model left out in turn: ``{left out: rho}``."""
    qc = cube(records, q, "model", models, images, seeds)
    pc = cube(records, "test_psnr", "model", models, images, seeds)
    keep = {m: [i for i in range(len(models)) if i != k] for k, m in enumerate(models)}
    return {m: float(rank_statistics(qc[ix], pc[ix])[0]) for m, ix in keep.items()}


def robustness(records: Sequence[dict], quantities: Sequence[str], models: Sequence[str], images: Sequence[str],
               seeds: Sequence[int], resamples: int, seed: int = 0) -> dict:
    """Per quantity: the 95% interval of the mean per-image rho when the **models** are drawn with
    replacement too (with the images and seeds), and the leave-one-model-out range (its weakest case)."""
    wide = correlations(records, quantities, models, images, ("model", "image", "seed"), resamples, seed,
                        seeds=seeds)
    out = {}
    for q in quantities:
        loo = leave_one_out(records, q, models, images, seeds)
        finite = {m: v for m, v in loo.items() if np.isfinite(v)}
        weakest = min(finite, key=lambda m: abs(finite[m])) if finite else None
        out[q] = {"ci95_models": wide[q]["ci95"], "loo_min": min(finite.values(), default=float("nan")),
                  "loo_max": max(finite.values(), default=float("nan")), "loo_weakest": weakest}
    return out


def analyse(runs: Sequence[dict], models: Sequence[str], images: Sequence[str], seeds: Sequence[int],
            resamples: int, seed: int = 0) -> dict:
    """Aggregated rows, the correlations (bootstrap over images and seeds) of every kernel quantity and
    their :func:`robustness` to the choice of models."""
    qs = [f"{k}_{q}" for k in KERNELS for q in QUANTITIES if any(f"{k}_{q}" in r for r in runs)]
    signs = {f"{k}_{q}": s for k in KERNELS for q, (_, s) in QUANTITIES.items()}
    corr = correlations(runs, [*qs, *REFERENCE_ROWS], models, images, ("image", "seed"), resamples, seed,
                        seeds=seeds, signs=signs)
    return {"results": aggregate(runs), "correlations": corr,
            "robustness": robustness(runs, [*qs, *REFERENCE_ROWS], models, images, seeds, resamples, seed)}


def label(q: str) -> str:
    """Table label of a correlated quantity (``ntk_bound`` -> ``NTK: bound B (targets y - O(0))``)."""
    if q in REFERENCE_ROWS:
        return REFERENCE_ROWS[q]
    k, _, base = q.partition("_")
    if k in KERNELS and base in QUANTITIES:
        return f"{k.upper()}: {QUANTITIES[base][0]}" + ("" if is_bound(base) else " (HGH)")
    return QUANTITIES[q][0] if q in QUANTITIES else q


# -- tables and the figure -----------------------------------------------------------------------------
def fmt_rho(v: float) -> str:
    """``+0.12`` (``nan`` for a missing value)."""
    return "nan" if not np.isfinite(v) else f"{v:+.2f}"


def corr_table(corr: Mapping[str, dict], images: Sequence[str], label_of: Callable[[str], str] = label,
               blocks: bool = False) -> str:
    """Markdown table of :func:`correlations` (``blocks``: also the pooled interval and the per-block rho)."""
    extra = " pooled 95% | per (image, seed) | its 95% |" if blocks else ""
    out = ("| quantity | expected sign | " + " | ".join(images) + " | mean per image | 95% bootstrap | pooled |"
           + extra + "\n|---|---|" + "---|" * len(images) + "---|---|---|" + ("---|---|---|" if blocks else "") + "\n")
    for q, c in corr.items():
        out += (f"| {label_of(q)} | {'-?+'[c['expected_sign'] + 1]} | "
                + " | ".join(fmt_rho(c["per_image"][im]) for im in images)
                + f" | **{fmt_rho(c['mean'])}** | [{fmt_rho(c['ci95'][0])}, {fmt_rho(c['ci95'][1])}] | "
                + f"{fmt_rho(c['pooled'])} |")
        if blocks:
            out += (f" [{fmt_rho(c['pooled_ci95'][0])}, {fmt_rho(c['pooled_ci95'][1])}] | {fmt_rho(c['per_block'])}"
                    f" | [{fmt_rho(c['per_block_ci95'][0])}, {fmt_rho(c['per_block_ci95'][1])}] |")
        out += "\n"
    return out


def robustness_table(corr: Mapping[str, dict], robust: Mapping[str, dict]) -> str:
    """Markdown table of :func:`robustness` beside the mean per-image rho and its images-and-seeds interval."""
    out = ("| quantity | mean per image | 95%, images and seeds | 95%, models too | leave one model out | "
           "weakest without |\n|---|---|---|---|---|---|\n")
    for q, c in corr.items():
        r = robust[q]
        out += (f"| {label(q)} | **{fmt_rho(c['mean'])}** | [{fmt_rho(c['ci95'][0])}, {fmt_rho(c['ci95'][1])}] | "
                f"[{fmt_rho(r['ci95_models'][0])}, {fmt_rho(r['ci95_models'][1])}] | "
                f"{fmt_rho(r['loo_min'])} to {fmt_rho(r['loo_max'])} | {r['loo_weakest']} |\n")
    return out


def best_quantity(corr: Mapping[str, dict]) -> str:
    """The kernel quantity with the largest |mean per-image rho|."""
    qs = [q for q in corr if q not in REFERENCE_ROWS and np.isfinite(corr[q]["mean"])]
    return max(qs, key=lambda q: abs(corr[q]["mean"])) if qs else next(iter(corr))


def _log_axis(q: str, values: Sequence[float]) -> bool:
    """Log scale for the bounds and effective ranks whose (positive) values span more than a decade."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return (is_bound(q) or "rank" in q) and len(v) > 0 and v.min() > 0 and v.max() > 10 * v.min()


def plot(rows: Sequence[dict], corr: Mapping[str, dict], images: Sequence[str], models: Sequence[str]):
    """2 x 2 panels of the hold-out PSNR (minus the image's mean over the models, so that the per-image
    rankings show) against the NTK bound, the NTK effective rank, the GTK bound and the best-correlated
    quantity: one point per (model, image) seed mean, colour per model, marker per image."""
    from matplotlib.ticker import NullFormatter

    panels = [q for q in ("ntk_bound", "ntk_effective_rank", "gtk_bound") if q in corr]
    best = best_quantity(corr)
    panels += [best] if best not in panels else [q for q in ("ntk_hf_fraction",) if q in corr]
    fig, ax = ac.figure(cols=2, rows=2, width=5.2, height=4.2)
    markers = "osD^v<>ph"
    mean = {im: np.mean([r["test_psnr"] for r in rows if r["image"] == im and r["model"] in models]) for im in images}
    for a, q in zip(ax.ravel(), panels):
        for k, im in enumerate(images):
            for n in models:
                r = next((r for r in rows if r["model"] == n and r["image"] == im and q in r), None)
                if r is not None:
                    a.scatter(r[q], r["test_psnr"] - mean[im], marker=markers[k % len(markers)],
                              color=ac.model_color(n), s=36, edgecolor="black", linewidth=0.3,
                              label=n if k == 0 else None)
        c = corr[q]
        a.set_xlabel(label(q), fontsize=8)
        if _log_axis(q, [r[q] for r in rows if q in r]):
            a.set_xscale("log")
            a.xaxis.set_minor_formatter(NullFormatter())
        a.set_ylabel("hold-out PSNR - image mean (dB)")
        a.set_title(f"rho per image {fmt_rho(c['mean'])} [{fmt_rho(c['ci95'][0])}, {fmt_rho(c['ci95'][1])}], "
                    f"pooled {fmt_rho(c['pooled'])}", fontsize=8)
        a.grid(alpha=0.3)
    for a in ax.ravel()[len(panels) :]:
        a.set_visible(False)
    ax[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle("Kernel at initialisation vs hold-out PSNR after training (NTK: wrt all parameters; GTK: wrt "
                 "grid features); markers: " + ", ".join(f"{markers[k % len(markers)]} {im}"
                                                        for k, im in enumerate(images)), fontsize=9)
    return fig


# -- the command ---------------------------------------------------------------------------------------
def run(cfg: RankingConfig) -> dict:
    """Measure, correlate, plot and save; returns the JSON payload. (One torch thread.)"""
    return ac.run_analysis(cfg, _run)


def _run(cfg: RankingConfig, out: Path) -> dict:
    check_config(cfg)
    t0 = time.time()
    images = {Path(im).stem if Path(im).suffix else im: prepare_image(im, cfg.size) for im in cfg.images}
    if len(images) != len(cfg.images):
        raise InputError(f"--images: two images share a name {list(cfg.images)}")
    sizes = {n: match_budget(n, cfg.budget, cfg.size) for n in cfg.models}
    runs = measure(cfg, images, sizes)
    result = analyse(runs, cfg.models, list(images), cfg.seeds, cfg.resamples)
    fig = plot(result["results"], result["correlations"], list(images), cfg.models)
    payload = {"config": {k: str(v) for k, v in vars(cfg).items()}, "kernels": {k: v[1] for k, v in KERNELS.items()},
               "models": {n: MODELS[n].what for n in cfg.models}, "sizes": sizes,
               "params": {n: count_parameters(build(n, sizes[n], cfg.size)) for n in cfg.models},
               "runs": runs, **result, "figures": {"ranking": ac.save(fig, out, "gtk_ranking.png")},
               "wall_seconds": time.time() - t0}
    payload["json"] = ac.write_json(out, "gtk_ranking.json", payload)
    best = best_quantity(result["correlations"])
    c = result["correlations"][best]
    print(f"gtk-ranking: {len(runs)} cells; best predictor {best}: rho {fmt_rho(c['mean'])} "
          f"[{fmt_rho(c['ci95'][0])}, {fmt_rho(c['ci95'][1])}]; wrote gtk_ranking.png and gtk_ranking.json to "
          f"{cfg.out}")
    return payload
