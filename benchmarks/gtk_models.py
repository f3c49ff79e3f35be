"""Theory against practice across models: do NTK / GTK quantities at initialisation rank the hold-out PSNR?

The full run of ``gridfield gtk-ranking`` (:mod:`gridfield.analyses.ranking`) on Kodak: every model of
the line-up (:data:`gridfield.analyses.ranking.MODELS`: dense, hash, hash with an MLP decoder, planes
sum and product, MulFAGrid stable and paper form on the hash layout, a Fourier-feature MLP, an MFN) at
a matched parameter count, on ``--size x --size`` luminance crops of Kodak images (``../shared/data/kodak``)
with half of the pixels held out, for several seeds (each sets the initialisation and the mask).

Resumable: every (model, image, seed) cell is saved to ``benchmarks/results/gtk_models.json`` as its
(model, seed) group finishes; a rerun with the same settings measures only the missing cells (``--fresh``
starts over). Writes ``docs/gtk_models.md`` (the hand-written section between ``<!-- BEGIN reading -->``
and ``<!-- END reading -->`` is kept) and ``docs/figures/gtk_models.png``.

    .venv/bin/python benchmarks/gtk_models.py                  # 4 images x 4 seeds x 9 models, ~20 min
    .venv/bin/python benchmarks/gtk_models.py --images kodim01 --seeds 0 --steps 50 --no-write  # a look
    .venv/bin/python benchmarks/gtk_models.py --replot         # tables, figure and page from the JSON
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread (shared machine)
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED_DATA, machine, markdown_table  # noqa: E402
from gridfield.analyses import ranking as rk  # noqa: E402
from gridfield.errors import InputError  # noqa: E402
from gridfield.models import count_parameters  # noqa: E402
from gridfield.presets.image import image_lr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KODAK = SHARED_DATA / "kodak"
RESULTS = ROOT / "benchmarks" / "results" / "gtk_models.json"
DOC = ROOT / "docs" / "gtk_models.md"
FIGURE = ROOT / "docs" / "figures" / "gtk_models.png"
#: settings a resumed run must share with the saved cells (models, images, seeds and resamples may change)
CELL_SETTINGS = ("size", "budget", "steps", "holdout", "ridge", "topk", "hf_cutoff")


def settings_of(cfg: rk.RankingConfig) -> dict:
    """The JSON form of the run's settings."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items() if k != "out"}


def load_saved(cfg: rk.RankingConfig, fresh: bool, strict: bool = True) -> dict:
    """The saved payload whose cells fit ``cfg`` (empty when there is none or ``fresh``); a mismatch of
    :data:`CELL_SETTINGS` stops with a message (``strict``) or gives the empty payload."""
    empty = {"runs": [], "sessions": []}
    if fresh or not RESULTS.exists():
        return empty
    saved = json.loads(RESULTS.read_text())
    now = settings_of(cfg)
    diff = {k: (saved["settings"].get(k), now[k]) for k in CELL_SETTINGS if saved["settings"].get(k) != now[k]}
    if diff and not strict:
        return empty
    if diff:
        raise SystemExit(f"error: {RESULTS.relative_to(ROOT)} was measured with other settings {diff} "
                         "(saved, now); rerun with --fresh to start over")
    return saved


def save(payload: dict) -> None:
    """Write the payload to :data:`RESULTS` (through a temporary file: an interrupt leaves the old one)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(RESULTS)


def measure(cfg: rk.RankingConfig, fresh: bool, persist: bool = True) -> dict:
    """Measure the missing cells (saving after every (model, seed) group when ``persist``); returns the payload."""
    paths = {im: KODAK / f"{im}.png" for im in cfg.images}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"gtk_models: Kodak images not found: {missing}")
    payload = load_saved(cfg, fresh, strict=persist)
    images = {im: rk.prepare_image(p, cfg.size) for im, p in paths.items()}
    sizes = {n: rk.match_budget(n, cfg.budget, cfg.size) for n in cfg.models}
    params = {n: count_parameters(rk.build(n, sizes[n], cfg.size)) for n in cfg.models}
    for n in cfg.models:
        print(f"{n:16s} params {params[n]:6d} ({params[n] / cfg.budget - 1:+.1%})  {sizes[n]}", flush=True)
    payload |= {"settings": settings_of(cfg), "sizes": {**payload.get("sizes", {}), **sizes},
                "params": {**payload.get("params", {}), **params}}
    done = {(r["model"], r["image"], r["seed"]) for r in payload["runs"]}
    start, t0 = dt.datetime.now().isoformat(timespec="seconds"), time.time()
    session = {"start": start, "machine": machine(), "cells": 0, "seconds": 0.0}
    payload["sessions"] = payload.get("sessions", []) + [session]

    def on_group(rows: list[dict]) -> None:
        payload["runs"] += rows
        session["cells"] += len(rows)
        session["seconds"] = time.time() - t0
        session["end"] = dt.datetime.now().isoformat(timespec="seconds")
        if persist:
            save(payload)
        for r in rows:
            print(f"{r['image']} {r['model']:16s} s{r['seed']} NTK B {r['ntk_bound']:8.3g} erank "
                  f"{r['ntk_effective_rank']:7.1f} hf {r['ntk_hf_fraction']:.3f} | GTK B "
                  f"{r.get('gtk_bound', float('nan')):8.3g} | train {r['train_psnr']:6.2f} test "
                  f"{r['test_psnr']:6.2f} dB  gtk {r['gtk_seconds']:.1f}s fit {r['fit_seconds']:.1f}s", flush=True)

    rk.measure(cfg, images, sizes, done, on_group)
    return payload


def selected(payload: dict, cfg: rk.RankingConfig) -> list[dict]:
    """The saved cells of ``cfg``'s models, images and seeds."""
    return [r for r in payload["runs"] if r["model"] in cfg.models and r["image"] in cfg.images
            and r["seed"] in cfg.seeds]


def report(payload: dict, cfg: rk.RankingConfig, write: bool) -> dict:
    """Correlate, print; write the JSON, the figure and the page when ``write``."""
    runs = selected(payload, cfg)
    result = rk.analyse(runs, cfg.models, cfg.images, cfg.seeds, cfg.resamples)
    corr = result["correlations"]
    print("Spearman vs hold-out PSNR: per image, mean [95% bootstrap over images and seeds], pooled, per block")
    for q, c in corr.items():
        print(f"  {q:24s} " + " ".join(rk.fmt_rho(c["per_image"][im]) for im in cfg.images)
              + f"  mean {rk.fmt_rho(c['mean'])} [{rk.fmt_rho(c['ci95'][0])}, {rk.fmt_rho(c['ci95'][1])}]"
              + f"  pooled {rk.fmt_rho(c['pooled'])}  block {rk.fmt_rho(c['per_block'])}")
    payload = {**payload, **result, "per_model": rk.aggregate([{**r, "image": "all"} for r in runs])}
    if write:
        save(payload)
        FIGURE.parent.mkdir(parents=True, exist_ok=True)
        rk.plot(result["results"], corr, list(cfg.images), cfg.models).savefig(FIGURE)
        DOC.write_text(markdown(payload, cfg, DOC.read_text() if DOC.exists() else None))
        print(f"wrote {RESULTS.relative_to(ROOT)}, {FIGURE.relative_to(ROOT)}, {DOC.relative_to(ROOT)}")
    return payload


def _reading(old: str | None) -> str:
    begin, end = "<!-- BEGIN reading -->", "<!-- END reading -->"
    if not old or begin not in old or end not in old:
        return f"{begin}\n_(no hand-written reading yet)_\n{end}"
    return old[old.index(begin) : old.index(end) + len(end)]


def markdown(payload: dict, cfg: rk.RankingConfig, old: str | None) -> str:
    """The page ``docs/gtk_models.md`` (keeps the old page's hand-written reading section)."""
    s, corr = payload["settings"], payload["correlations"]
    models = "\n".join(f"| {n} | {rk.MODELS[n].what} | {payload['params'][n]} | {payload['sizes'][n]} | "
                       f"{image_lr(rk.MODELS[n].lr)[0]:g} / {image_lr(rk.MODELS[n].lr)[1]:g} |" for n in cfg.models)
    summary_cols = ["model", "params", "test_psnr", "test_psnr_spread", "train_psnr", "ntk_bound", "gtk_bound",
                    "ntk_bound_ridge", "gtk_bound_ridge", "ntk_effective_rank", "gtk_effective_rank",
                    "ntk_hf_fraction", "gtk_hf_fraction", "ntk_floored", "gtk_floored"]
    cols = ["model", "image", "test_psnr", "test_psnr_spread", "train_psnr", "ntk_bound", "ntk_bound_centered",
            "ntk_bound_ridge", "ntk_effective_rank", "ntk_topk_energy", "ntk_decay_exponent", "ntk_hf_fraction",
            "ntk_alignment", "gtk_bound", "gtk_bound_centered", "gtk_bound_ridge", "gtk_effective_rank",
            "gtk_hf_fraction", "gtk_alignment"]
    sessions = payload["sessions"]
    m = sessions[-1]["machine"]
    wall = sum(x["seconds"] for x in sessions)
    when = ", ".join(f"{x['start']} ({x['cells']} cells, {x['seconds']:.0f} s)" for x in sessions if x["cells"])
    n_train = payload["runs"][0]["n_train"] if payload["runs"] else 0
    raw = [r["ntk_effective_rank_raw"] for r in payload["per_model"]]
    raw_lo, raw_hi = (min(raw), max(raw)) if raw else (float("nan"),) * 2
    n_grid = len({r["model"] for r in payload["runs"] if "gtk_bound" in r and r["model"] in cfg.models})
    return f"""# Theory against practice across models: the GTK and the hold-out PSNR

`benchmarks/gtk_models.py` ({m['date']}, {m['cpu']}, {m['cores']} cores shared with other jobs, 1 torch thread,
1 BLAS thread; measured in {when}: {wall:.0f} s in all). JSON: `benchmarks/results/gtk_models.json`.
The same analysis at a small size on built-in images: `gridfield gtk-ranking` (`gridfield.analyses.ranking`).

Question: do quantities of the tangent kernel at initialisation, computed on the training pixels,
rank *different models* at the same parameter count the way their hold-out PSNR after training does?

## Setup

* Images: {', '.join(cfg.images)} (Kodak), downscaled (anti-aliased) to {round(1.5 * s['size'])} px on the
  long side, centre-cropped to {s['size']}x{s['size']}, luminance (one channel, for the kernels and the fit
  alike). {s['holdout']:.0%} of the pixels held out at random; the other {n_train} are the training set.
* Seeds {list(cfg.seeds)}: each sets the initialisation **and** the hold-out mask (the same mask for every
  model and image of a seed).
* Two kernels, both at initialisation, in float64, on the training pixels (and, for the high-frequency
  share, on the full {s['size']}x{s['size']} lattice), computed with `gridfield.gtk.gtk_fn`:
  * **NTK** (`ntk_*`): the empirical NTK wrt **all** trainable parameters (`wrt="all"`: grid features,
    decoder, MulFAGrid's kernel networks, the MLPs' weights). The one definition every model has.
  * **GTK** (`gtk_*`): the paper's GTK wrt the **grid features** only (`wrt="grid"`), for the grid models
    (the two MLPs have none).
* Quantities of each kernel (normalized to trace(G)/n = 1):
  * **bound** `sqrt(2 y^T G^-1 y / n)` of G itself: `gridfield.gtk.bound(G, y)` with the library's
    default regularization (an eigenvalue floor: when lambda_min < 1e-6 trace(G)/n, the ridge that lifts
    it to the floor), value `Bound.normalized`, for targets `y - O(0)` (the residual at initialisation,
    Theorem 3's form) and `y - mean(y)` (`bound_centered`); `bound_ridge`: centred targets with a
    fixed ridge {s['ridge']:g} trace(G)/n for every model. `*_floored`: in how many seeds the floor acted.
  * The other quantities are of the **centred** kernel `H G H`, `H = I - 1 1^T / n` (labelled HGH):
    every model has an output bias, whose constant mode is otherwise the top eigenvalue of the NTK (the
    participation ratio of the uncentred NTK, `ntk_effective_rank_raw`, is {raw_lo:.1f} to {raw_hi:.1f} here).
  * **effective rank** `(sum l)^2 / sum l^2` and the library's `exp(entropy)`; **top-k energy** (k =
    n/16), **decay exponent** of `l_i ~ i^-alpha` over i in [4, n/4] (exact `eigh`).
  * **high-frequency share** of the kernel's Fourier spectrum on the pixel lattice
    (`gridfield.gtk.fourier_spectrum`) above `|omega| = {s['hf_cutoff'] or s['size'] / 4:g}` cycles per image.
  * **kernel-target alignment** `y^T G y / (||G||_F ||y||^2)` of the centred targets (with HGH: the
    centred alignment of Cortes et al. 2012).
* Training: `fit_image`, {s['steps']} full-batch Adam steps, cosine decay, learning rates (grid / other) of
  the image presets (`gridfield.presets.image_lr`). Hold-out PSNR on the held-out half.
* Parameters matched to {s['budget']} (within 5%, `ranking.match_budget`; hash layouts: finest level nearest
  0.75 x {s['size']}).

| model | what | params | size arguments | lr grid / other |
|---|---|---|---|---|
{models}

## Per model (mean over images and seeds; bounds: geometric mean)

`test_psnr_spread`: max - min hold-out PSNR over all images and seeds.

{markdown_table(payload['per_model'], summary_cols)}

## Spearman correlation with the hold-out PSNR (over the {len(cfg.models)} models)

A good predictor has |rho| near 1, with the sign a theory predicts where one does (`-` for the bounds,
`+` for the alignment, `?` none). Per image: over the seed means of each model (GTK rows: the {n_grid} grid
models). Mean per image, with a 95% bootstrap interval ({s['resamples']} resamples drawing the images and
the seeds with replacement). Pooled: all model x image seed means together (this also reflects how hard
each image is). Per (image, seed): the mean of the rho over the models within one image and seed. The
last two rows are not kernel quantities; they are there for scale.

{rk.corr_table(corr, list(cfg.images), blocks=True)}
![kernel quantities vs hold-out PSNR](figures/gtk_models.png)

### How much the conclusion depends on the choice of models

The intervals above resample images and seeds, not models: with {len(cfg.models)} models a single one can
carry a correlation. Here the same mean per-image rho with the models drawn with replacement too, and
its range when one model is left out (and which model's absence weakens it most).

{rk.robustness_table(corr, payload['robustness'])}
## Per model and image (mean over seeds; bounds: geometric mean)

{markdown_table(payload['results'], cols)}

## Reading

{_reading(old)}
"""


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="kodim01,kodim05,kodim19,kodim23", help="comma-separated Kodak names")
    ap.add_argument("--models", default=",".join(rk.MODELS))
    ap.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds (initialisation and hold-out mask)")
    ap.add_argument("--size", type=int, default=64, help="side of the square crop")
    ap.add_argument("--budget", type=int, default=6000, help="target parameter count of every model")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--holdout", type=float, default=0.5)
    ap.add_argument("--ridge", type=float, default=1e-3, help="fixed relative ridge of bound_ridge")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples over images and seeds")
    ap.add_argument("--fresh", action="store_true", help="ignore the saved cells and start over")
    ap.add_argument("--no-write", action="store_true", help="print only (no cell is saved)")
    ap.add_argument("--replot", action="store_true", help="no new cells: analysis, figure and page from the JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = rk.RankingConfig(models=tuple(args.models.split(",")), images=tuple(args.images.split(",")),
                           size=args.size, budget=args.budget, seeds=tuple(int(v) for v in args.seeds.split(",")),
                           steps=args.steps, holdout=args.holdout, ridge=args.ridge, resamples=args.resamples)
    try:
        rk.check_config(cfg)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    payload = load_saved(cfg, False) if args.replot else measure(cfg, args.fresh, persist=not args.no_write)
    return report(payload, cfg, write=not args.no_write)


if __name__ == "__main__":
    main()
