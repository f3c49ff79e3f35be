"""GTK as a design guide for MulFAGrid: do GTK quantities at initialisation rank the variants' hold-out PSNR?

For each model variant (hash and dense baselines, MulFAGrid on the hash layout with different kernel
networks, MulFAGrid on a dense layout) and each image, the grid tangent kernel wrt the grid features
(``gtk(field, x, wrt="grid")``: the paper's GTK, float64) is taken at initialisation on the same
training pixels the fit uses; from it the trace-normalized Theorem-3 bound (``gridfield.gtk.bound``),
the effective rank, the top-k energy share, a spectral-decay exponent, the high-frequency share of its
Fourier spectrum (``gridfield.gtk.fourier_spectrum`` on the full pixel lattice) and the kernel-target
alignment are computed. Then the model is trained (``fit_image``, full batch of the training pixels)
and its hold-out PSNR measured. Spearman rank correlations (with a bootstrap over variants) say which
GTK quantity predicts the ranking.

Images: Kodak ``kodim01..`` from ``../shared/data/kodak``, downscaled (anti-aliased) to ``--size * 1.5``
on the long side, centre-cropped to ``--size x --size`` and converted to luminance
(``0.299 R + 0.587 G + 0.114 B``, one channel: the GTK and the fit see the same scalar image). Half of
the pixels are held out at random (``holdout_mask``, the seed of the fit). Writes
``benchmarks/results/mulfagrid_gtk.json``, ``docs/figures/mulfagrid_gtk.png`` and ``docs/mulfagrid_gtk.md``
(a hand-written section between ``<!-- BEGIN reading -->`` and ``<!-- END reading -->`` is kept).

    .venv/bin/python benchmarks/mulfagrid_gtk.py                       # 3 images, 64x64, 300 steps
    .venv/bin/python benchmarks/mulfagrid_gtk.py --images kodim01 --steps 50 --no-write   # quick look
    .venv/bin/python benchmarks/mulfagrid_gtk.py --replot     # analysis + page again from the saved runs
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread (shared machine)
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED_DATA, machine, markdown_table  # noqa: E402
from gridfield.analyses import ranking as rk  # noqa: E402
from gridfield.analyses.ranking import (  # noqa: E402, F401 (re-exported for tests/test_mulfagrid_gtk_bench.py)
    QUANTITIES,
    prepare_image,
    spearman,
    spectrum_measures,
    trace_normalized_bound,
    training_points,
)
from gridfield.data.images import pixel_coords  # noqa: E402
from gridfield.gtk import gtk  # noqa: E402
from gridfield.models import build_field, count_parameters  # noqa: E402
from gridfield.tasks.image_fit import fit_image, holdout_mask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KODAK = SHARED_DATA / "kodak"

#: the hash layout shared by every hash-based variant (log2_hashmap_size and finest_resolution are
#: chosen per variant to match the parameter budget, see :func:`match_budget`)
HASH = {"n_levels": 4, "features_per_level": 2, "base_resolution": 8}
#: MulFAGrid's reference kernel network (each variant changes one thing)
KERNEL = {"frequencies": 2, "width": 16, "layers": 1, "form": "stable", "share_kernel": False}

#: name -> (model, layout ("hash" / "dense"), decoder, decoder kwargs, MulFAGrid kernel overrides or None,
#: lr_grid, lr_other, what it is)
VARIANTS: dict[str, tuple] = {
    "hash": ("hash", "hash", "linear", {}, None, 1e-2, 1e-2, "hash grid, linear decoder"),
    "hash-mlp": ("hash", "hash", "mlp", {"width": 32, "hidden_layers": 1}, None, 1e-2, 1e-2,
                 "hash grid, MLP 32x1 decoder"),
    "dense": ("dense", "dense", "linear", {}, None, 1e-1, 1e-2, "dense bilinear grid, linear decoder"),
    "mf-hash": ("mulfagrid", "hash", "linear", {}, {}, 1e-2, 1e-2, "MulFAGrid hash, L=2, width 16, 1 layer"),
    "mf-hash-layers2": ("mulfagrid", "hash", "linear", {}, {"layers": 2}, 1e-2, 1e-2, "... 2 filter layers"),
    "mf-hash-freq1": ("mulfagrid", "hash", "linear", {}, {"frequencies": 1}, 1e-2, 1e-2, "... L=1 octave"),
    "mf-hash-freq4": ("mulfagrid", "hash", "linear", {}, {"frequencies": 4}, 1e-2, 1e-2, "... L=4 octaves"),
    "mf-hash-width8": ("mulfagrid", "hash", "linear", {}, {"width": 8}, 1e-2, 1e-2, "... width 8"),
    "mf-hash-share": ("mulfagrid", "hash", "linear", {}, {"share_kernel": True}, 1e-2, 1e-2,
                      "... one kernel network shared by the levels"),
    "mf-hash-paper": ("mulfagrid", "hash", "linear", {}, {"form": "paper"}, 1e-2, 1e-2, "... paper form"),
    "mf-dense": ("mulfagrid", "dense", "linear", {}, {}, 1e-1, 1e-2, "MulFAGrid dense layout (stable), L=2, w 16"),
}

def build(name: str, budget_kwargs: dict, seed: int = 0) -> torch.nn.Module:
    """Variant ``name`` (float32) with its size arguments ``budget_kwargs``, initialised from ``seed``."""
    model, layout, decoder, dec_kw, kernel, *_ = VARIANTS[name]
    kw: dict = dict(budget_kwargs)
    if layout == "hash":
        kw.update(HASH)
    else:
        kw["features_per_level"] = 2
    if model == "mulfagrid":
        kw.update(KERNEL | kernel, layout=layout)
        if layout == "hash":
            kw["resolutions"] = None
    torch.manual_seed(seed)
    return build_field(model, 2, 1, decoder, decoder_kwargs=dec_kw or None, **kw)


def match_budget(name: str, target: int) -> dict:
    """Size arguments of ``name`` whose parameter count is closest to ``target``.

    Hash layouts: ``log2_hashmap_size`` in 9..12 and ``finest_resolution`` in 32..80 (step 2; kept near
    the image's resolution so that the variants differ in their kernels more than in their lattices),
    ties broken towards ``log2 = 11``, ``finest = 48``; dense layouts: the resolution ``R``.
    """
    layout = VARIANTS[name][1]
    if layout == "dense":
        rows = [[{"resolutions": r} for r in range(8, 129)]]
    else:
        rows = [[{"log2_hashmap_size": t, "finest_resolution": f} for t in (9, 10, 11, 12)] for f in range(32, 81, 2)]

    def pref(kw):
        return 0.0 if layout == "dense" else abs(kw["log2_hashmap_size"] - 11) + abs(kw["finest_resolution"] - 48) / 48

    return rk.closest_to_budget(rows, lambda kw: count_parameters(build(name, kw)), target, pref)


def high_frequency_fraction(field64, h: int, w: int, cutoff: float) -> float:
    """Share of ``sum_omega S(omega)`` (= trace G) at ``|omega| > cutoff`` cycles: the exact Fourier
    spectrum (:func:`gridfield.gtk.fourier_spectrum`) of the grid GTK on the full ``h x w`` pixel lattice."""
    return rk.hf_share(gtk(field64, pixel_coords(h, w).double(), implementation="structured"), (h, w), cutoff)


def gtk_quantities(field, x: torch.Tensor, y: torch.Tensor, shape: tuple[int, int], topk: int,
                   hf_cutoff: float, ridge: float) -> dict:
    """GTK quantities at initialisation of ``field`` on the points ``x`` ``[n, 2]`` with targets ``y`` ``[n, 1]``
    (:func:`gridfield.analyses.ranking.target_quantities` and ``spectrum_quantities``).

    The GTK is taken wrt the grid features only (``wrt="grid"``) on a float64 copy of the field.
    """
    f64 = copy.deepcopy(field).double()
    x = x.double()
    y = y.double()
    t0 = time.perf_counter()
    g = gtk(f64, x, wrt="grid", implementation="structured", dtype=torch.float64)
    with torch.no_grad():
        r0 = y - f64(x)
    out = {**rk.target_quantities(g, y, r0, ridge), **rk.spectrum_quantities(g, topk), "alignment": rk.alignment(g, y),
           "hf_fraction": high_frequency_fraction(f64, *shape, hf_cutoff), "n_gtk": int(x.shape[0]),
           "grid_params": int(g.n_params)}
    out["gtk_seconds"] = time.perf_counter() - t0
    return out


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (variant, image): the mean over initialisation seeds (geometric mean for the bounds,
    whose values span decades; ``floored``: in how many seeds the library's eigenvalue floor acted)."""
    return rk.aggregate(runs, key="variant", seed_key="init_seed")


def correlations(rows: list[dict], images: list[str], resamples: int, seed: int = 0) -> dict:
    """Per quantity: Spearman rho vs hold-out PSNR per image, their mean, pooled over all rows, and a 95%
    bootstrap interval of the mean per-image rho (variants resampled with replacement, same draw for all
    images)."""
    names = sorted({r["variant"] for r in rows}, key=list(VARIANTS).index)
    return rk.correlations(rows, [*QUANTITIES, "train_psnr", "params"], names, images, ("model",), resamples, seed,
                           key="variant", signs={q: s for q, (_, s) in QUANTITIES.items()})


def within_seed(runs: list[dict], layout: str | None = "hash") -> dict:
    """Seed-to-seed Spearman rho: each quantity and the hold-out PSNR minus their means over the seeds of
    the same (variant, image) (log for the bounds), pooled over all runs of ``layout``'s variants (all
    variants when ``None``). Does the GTK tell which initialisation of one architecture generalizes better?"""
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        if layout is None or VARIANTS[r["variant"]][1] == layout:
            cells.setdefault((r["variant"], r["image"]), []).append(r)
    out = {}
    for q in [*QUANTITIES, "train_psnr"]:
        a, b = [], []
        for rs in cells.values():
            v = np.array([np.log(r[q]) if q.startswith("bound") else r[q] for r in rs], dtype=float)
            t = np.array([r["test_psnr"] for r in rs])
            a += list(v - v.mean())
            b += list(t - t.mean())
        out[q] = spearman(a, b)
    return out


def subset(rows: list[dict], layout: str) -> list[dict]:
    """The rows of the variants on ``layout`` (``"hash"`` or ``"dense"``)."""
    return [r for r in rows if VARIANTS[r["variant"]][1] == layout]


def plot(rows: list[dict], corr: dict, images: list[str], path: Path) -> list[str]:
    """Two panels: the best-correlated GTK quantity and the bound vs hold-out PSNR (one point per
    variant and image, marker per image, labelled by variant)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    best = max(QUANTITIES, key=lambda q: abs(corr[q]["mean"]) if np.isfinite(corr[q]["mean"]) else -1)
    qs = [best] + [q for q in ("bound_centered", "bound") if q != best][:1]
    fig = Figure(figsize=(12, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(qs))
    markers = "osD^v<>"
    colors = {n: f"C{i}" if i < 10 else "black" for i, n in enumerate(VARIANTS)}
    for ax, q in zip(np.atleast_1d(axes), qs):
        for k, im in enumerate(images):
            for r in (r for r in rows if r["image"] == im):
                ax.scatter(r[q], r["test_psnr"], marker=markers[k % len(markers)], color=colors[r["variant"]], s=36,
                           label=r["variant"] if k == 0 else None)
                ax.annotate(r["variant"].replace("mf-hash-", "mf-"), (r[q], r["test_psnr"]), fontsize=6,
                            xytext=(3, 2), textcoords="offset points")
        c = corr[q]
        ax.set_xlabel(QUANTITIES[q][0] + (" (log)" if q.startswith("bound") else ""))
        if q.startswith("bound"):
            ax.set_xscale("log")
        ax.set_ylabel("hold-out PSNR (dB)")
        ax.set_title(f"Spearman mean per image {c['mean']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}], "
                     f"pooled {c['pooled']:+.2f}", fontsize=9)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="best")
    fig.suptitle("GTK (wrt grid features, at init) vs hold-out PSNR; markers: "
                 + ", ".join(f"{markers[k % len(markers)]} {im}" for k, im in enumerate(images)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return qs


_fmt = rk.fmt_rho


def corr_table(corr: dict, images: list[str]) -> str:
    """Markdown table of :func:`correlations`."""
    return rk.corr_table(corr, images, lambda q: QUANTITIES[q][0] if q in QUANTITIES else rk.REFERENCE_ROWS[q])


def markdown(payload: dict, old: str | None) -> str:
    """The page ``docs/mulfagrid_gtk.md`` (keeps the old page's hand-written reading section)."""
    s, rows, corr = payload["settings"], payload["results"], payload["correlations"]
    begin, end = "<!-- BEGIN reading -->", "<!-- END reading -->"
    reading = (f"{begin}\n_(no hand-written reading yet)_\n{end}" if not old or begin not in old or end not in old
               else old[old.index(begin) : old.index(end) + len(end)])
    variants = "\n".join(f"| {n} | {v[7]} | {v[2]} | {v[5]:g} / {v[6]:g} | {payload['sizes'][n]} |"
                         for n, v in VARIANTS.items() if n in payload["sizes"])
    cols = ["variant", "image", "params", "bound", "bound_centered", "bound_ridge", "floored", "effective_rank",
            "topk_energy", "decay_exponent", "hf_fraction", "alignment", "train_psnr", "test_psnr", "test_psnr_spread"]
    ctab = corr_table(corr, s["images"])
    htab = corr_table(payload["correlations_hash_layout"], s["images"])
    ws = payload["within_seed"]
    wtab = ("| quantity | " + " | ".join(QUANTITIES) + " | train_psnr |\n|---|" + "---|" * (len(QUANTITIES) + 1)
            + "\n| rho | " + " | ".join(_fmt(ws[q]) for q in [*QUANTITIES, "train_psnr"]) + " |\n")
    n_hash = len({r["variant"] for r in subset(rows, "hash")})
    m = payload["machine"]
    return f"""# GTK as a design guide for MulFAGrid

`benchmarks/mulfagrid_gtk.py` ({m['date']}, {m['cpu']}, 1 torch thread, 1 BLAS thread, shared
2-core machine; wall time {payload['wall_seconds']:.0f} s). JSON: `benchmarks/results/mulfagrid_gtk.json`.

Question: do quantities of the grid tangent kernel at initialisation, computed on the training
pixels, predict which MulFAGrid variant generalizes best (hold-out PSNR after training)?

## Setup

* Images: {', '.join(s['images'])} (Kodak), downscaled (anti-aliased) to {round(1.5 * s['size'])} px on the
  long side, centre-cropped to {s['size']}x{s['size']}, converted to luminance (one channel, for the GTK
  and the fit alike). {s['holdout']:.0%} of the pixels held out at random (`holdout_mask`, seed {s['seed']},
  the same mask `fit_image` uses); the other {payload['n_train']} pixels are the training set.
* GTK: `gridfield.gtk.gtk(field, x, wrt="grid", implementation="structured")`, i.e. **wrt the grid
  features only** (the paper's GTK; MulFAGrid's kernel network and the decoder are not differentiated),
  in float64 (a float64 copy of the float32 model), at initialisation, on the training pixels
  ({s['max_points']} at most: here n = {payload['n_gtk']}, the same points for every variant).
* Quantities (G normalized to trace(G)/n = 1 throughout):
  * **bound** `sqrt(2 y^T G^-1 y / n)`: `gridfield.gtk.bound(G, y)` (Cholesky at this n), value
    `Bound.normalized`, with the library's default eigenvalue floor (since 2026-12-02: when lambda_min is
    below 1e-6 trace(G)/n, the ridge that lifts it there; before, a ridge 1e-6 trace(G)/n was added only
    when lambda_min <= 1e-10 lambda_max, which made this bound erratic). Three versions: targets
    `y - O(0)` (the residual at initialisation, as `gridfield gtk-theory` does), centred targets
    `y - mean(y)` (the decoder's bias absorbs the mean, and the residual's constant part depends on the
    random bias), and centred targets with a fixed ridge {s['ridge']:g} trace(G)/n for every model.
  * **effective rank** `(sum l)^2 / sum l^2` (participation ratio) and the library's `effective_rank`
    (`exp` of the eigenvalue entropy); **top-k energy**: share of `sum l` in the top {s['topk']}
    eigenvalues; **decay exponent** `alpha` of `l_i ~ i^-alpha` fitted over `i` in [4, n/4]
    (all from `gridfield.gtk.eigenspectrum`, exact `eigh`).
  * **high-frequency share**: `gridfield.gtk.fourier_spectrum` of the GTK on the full
    {s['size']}x{s['size']} pixel lattice (as `gridfield gtk-spectra`); share of `sum_omega S(omega)`
    (= trace G) at `|omega| > {s['hf_cutoff']:g}` cycles per image.
  * **kernel-target alignment** `y^T G y / (||G||_F ||y||^2)` with centred targets.
* Training: `fit_image`, {s['steps']} Adam steps on the full batch of training pixels, cosine decay,
  learning rates per variant (grid / other = kernel network + decoder) below. Every variant is
  initialised with the seeds {s['init_seeds']} (GTK and fit per seed); the tables show the mean over the
  seeds (geometric mean for the bounds; `floored`: in how many seeds the library's floor acted;
  `test_psnr_spread`: max - min hold-out PSNR over the seeds). Correlations use these means.
* Decoder: the **linear** decoder for every grid variant (the model stays linear in the grid features
  at a fixed kernel), except the `hash-mlp` baseline (MLP, one hidden layer of 32, ReLU).
* Parameter counts matched to {s['budget']} +- 10% (`match_budget`: hash layouts choose
  `log2_hashmap_size` and `finest_resolution` with 4 levels, F = 2, base resolution 8; dense layouts the
  resolution R). Parameters include the kernel networks and the decoder.

| variant | what | decoder | lr grid / other | size arguments |
|---|---|---|---|---|
{variants}

## Results

{markdown_table(rows, cols)}

## Spearman correlation with hold-out PSNR (over the {len(payload['sizes'])} variants)

A good predictor has |rho| near 1 (and the sign a theory predicts, where one does: `-` for the
bounds, `+` for the alignment; `?`: no prediction). Bootstrap: {s['resamples']} resamples of the
variants (with replacement), mean of the per-image rho. Pooled: all variant x image rows together (the
images differ in difficulty, which the pooled value also reflects). The last two rows are not GTK
quantities; they are there for scale.

{ctab}
### Hash layout only ({n_hash} variants: the hash baselines and the MulFAGrid kernel variants)

The two dense-layout models differ from the hash-layout ones in every spectral quantity at once; without
them the question is whether the GTK ranks the choices of the kernel network.

{htab}
### Seed to seed (hash-layout variants)

Spearman rho of (quantity - its mean over the seeds of the same variant and image) against (hold-out
PSNR - its mean), pooled over all hash-layout runs ({sum(1 for r in payload['runs']
if VARIANTS[r['variant']][1] == 'hash')} runs; bounds in log): does the GTK tell which initialisation of
one architecture generalizes better? (The runs are not independent: one seed's GTK spectrum is shared by
the images.)

{wtab}
![GTK vs hold-out PSNR](figures/mulfagrid_gtk.png)

## Reading

{reading}
"""


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="kodim01,kodim05,kodim23", help="comma-separated Kodak names")
    ap.add_argument("--size", type=int, default=64, help="side of the square crop")
    ap.add_argument("--holdout", type=float, default=0.5)
    ap.add_argument("--budget", type=int, default=6000, help="target parameter count of every variant")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--max-points", type=int, default=2048, help="GTK points at most (training pixels)")
    ap.add_argument("--topk", type=int, default=0, help="top-k of the energy share (default n/16)")
    ap.add_argument("--hf-cutoff", type=float, default=0.0, help="|omega| cutoff in cycles (default size/4)")
    ap.add_argument("--ridge", type=float, default=1e-3, help="fixed relative ridge of bound_ridge")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples over variants")
    ap.add_argument("--seed", type=int, default=0, help="seed of the hold-out mask and the training loop")
    ap.add_argument("--init-seeds", default="0,1,2", help="comma-separated initialisation seeds (averaged)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--replot", action="store_true",
                    help="no new runs: redo the analysis, figure and page from benchmarks/results/mulfagrid_gtk.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.replot:
        saved = json.loads((ROOT / "benchmarks" / "results" / "mulfagrid_gtk.json").read_text())
        keep = ("machine", "settings", "sizes", "n_train", "n_gtk", "runs", "wall_seconds")
        return report({k: saved[k] for k in keep}, write=not args.no_write)
    names = args.variants.split(",")
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise SystemExit(f"error: unknown variants {bad}; choose from {list(VARIANTS)}")
    images = args.images.split(",")
    seeds = [int(v) for v in args.init_seeds.split(",")]
    paths = [KODAK / f"{im}.png" for im in images]
    if not all(p.is_file() for p in paths):
        print(f"mulfagrid_gtk: Kodak images not found under {KODAK}; skipping")
        return {}
    t_start = time.time()
    hf_cutoff = args.hf_cutoff or args.size / 4
    sizes = {n: match_budget(n, args.budget) for n in names}
    counts = {n: count_parameters(build(n, sizes[n])) for n in names}
    for n in names:
        print(f"{n:16s} params {counts[n]:6d}  {sizes[n]}", flush=True)
    spread = max(abs(c / args.budget - 1) for c in counts.values())
    if spread > 0.10:
        print(f"warning: parameter counts differ from the budget by up to {spread:.1%}", flush=True)
    idx = training_points(args.size, args.size, args.holdout, args.seed, args.max_points)
    topk = args.topk or max(1, idx.numel() // 16)
    x_all = pixel_coords(args.size, args.size)
    runs = []
    for im, path in zip(images, paths):
        img = prepare_image(path, args.size)
        y_all = img.reshape(-1, 1)
        for n in names:
            for seed in seeds:
                field = build(n, sizes[n], seed)
                q = gtk_quantities(field, x_all[idx], y_all[idx], (args.size, args.size), topk, hf_cutoff,
                                   args.ridge)
                lr_grid, lr_other = VARIANTS[n][5:7]
                t0 = time.perf_counter()
                fit = fit_image(field, img, steps=args.steps, batch_size=None, lr_grid=lr_grid, lr_other=lr_other,
                                holdout=args.holdout, seed=args.seed, progress=False, eval_every=args.steps)
                row = {"variant": n, "image": im, "init_seed": seed, "params": counts[n], **q,
                       "train_psnr": float(fit.metrics["psnr"]), "test_psnr": float(fit.metrics["test_psnr"]),
                       "fit_seconds": time.perf_counter() - t0}
                runs.append(row)
                print(f"{im} {n:16s} s{seed} B {q['bound']:9.3g} Bc {q['bound_centered']:9.3g} "
                      f"Br {q['bound_ridge']:7.3g} erank {q['effective_rank']:7.1f} top {q['topk_energy']:.3f} "
                      f"a {q['decay_exponent']:.2f} hf {q['hf_fraction']:.3f} al {q['alignment']:.3f} | "
                      f"train {row['train_psnr']:6.2f} test {row['test_psnr']:6.2f} dB  "
                      f"gtk {q['gtk_seconds']:.1f}s fit {row['fit_seconds']:.1f}s", flush=True)
    settings = {k: getattr(args, k) for k in ("size", "holdout", "budget", "steps", "max_points", "ridge",
                                              "resamples", "seed")}
    settings |= {"images": images, "variants": names, "init_seeds": seeds, "topk": topk, "hf_cutoff": hf_cutoff,
                 "gtk": "wrt='grid' (grid features only), float64, structured, at initialisation",
                 "decoder": "linear (hash-mlp: MLP 32x1)", "image": "luminance, centre crop"}
    n_train = int((~holdout_mask(args.size, args.size, args.holdout, "random",
                                 torch.Generator().manual_seed(args.seed))).sum())
    payload = {"machine": machine(), "settings": settings, "sizes": sizes, "n_train": n_train,
               "n_gtk": int(idx.numel()), "runs": runs, "wall_seconds": time.time() - t_start}
    return report(payload, write=not args.no_write)


def report(payload: dict, write: bool = True) -> dict:
    """Aggregate the runs, correlate, print; write the JSON, the figure and the page when ``write``."""
    s, runs = payload["settings"], payload["runs"]
    images = s["images"]
    rows = aggregate(runs)
    corr = correlations(rows, images, s["resamples"], s["seed"])
    corr_hash = correlations(subset(rows, "hash"), images, s["resamples"], s["seed"])
    for title, cc in (("all variants", corr), ("hash layout only", corr_hash)):
        print(f"Spearman vs hold-out PSNR, {title}: per image, mean [95% bootstrap], pooled")
        for q, c in cc.items():
            print(f"  {q:16s} " + " ".join(_fmt(c["per_image"][im]) for im in images)
                  + f"  mean {_fmt(c['mean'])} [{_fmt(c['ci95'][0])}, {_fmt(c['ci95'][1])}]"
                  + f"  pooled {_fmt(c['pooled'])}")
    ws = within_seed(runs)
    print("seed to seed (hash layout): " + " ".join(f"{q} {_fmt(v)}" for q, v in ws.items()))
    payload = {**payload, "results": rows, "correlations": corr, "correlations_hash_layout": corr_hash,
               "within_seed": ws}
    if write:
        out = ROOT / "benchmarks" / "results" / "mulfagrid_gtk.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n")
        plot(rows, corr, images, ROOT / "docs" / "figures" / "mulfagrid_gtk.png")
        doc = ROOT / "docs" / "mulfagrid_gtk.md"
        doc.write_text(markdown(payload, doc.read_text() if doc.exists() else None))
        print(f"wrote {out.relative_to(ROOT)}, docs/figures/mulfagrid_gtk.png, docs/mulfagrid_gtk.md")
    return payload

if __name__ == "__main__":
    main()
