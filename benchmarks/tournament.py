"""Equal-budget tournament: every model on every task, at equal parameters, (a) equal steps, (b) equal time.

Tasks and protocol (presets of ``gridfield.presets`` at the standard budgets, their learning rates):

* ``image``: Kodak (``../shared/data/kodak``, all 24 by default), ~300K parameters, random batches of
  65,536 pixels, cosine decay; (a) ``--image-steps`` (2000) Adam steps, (b) ``--image-seconds`` of
  training. PSNR and SSIM on the whole image.
* ``sdf``: bunny and armadillo (``../shared/data/meshes``), ~2M parameters, batches of 16,384 points;
  (a) ``--sdf-steps``, (b) ``--sdf-seconds``. IoU on a 256^3 lattice, Chamfer L1, normal consistency.
* ``nerf``: lego 400x400, ``--nerf-seconds`` (300) of training, all 200 test views: run by
  ``benchmarks/nerf_lego.py`` (equal time only: a NeRF step of one model is not a step of another).

Resumable per cell (task, mode, model, image or mesh): every finished cell is saved at once to
``benchmarks/results/tournament.json`` with its settings (budgets, threads and a fingerprint of the model's
preset: its field spec and learning rates), and a later run skips the cells it already has with the same
settings, so the tournament can be completed over several sittings. ``--report-only``
rewrites the tables from the JSON. Writes the ``tournament`` section of ``docs/benchmarks.md`` (one table
per task, the figure ``docs/figures/tournament_TASK.png``) and the model x task summary in the README.

Usage::

    python benchmarks/tournament.py --tasks image --images kodim01 kodim02 --models hash mulfagrid
    python benchmarks/tournament.py --tasks sdf --modes steps
    python benchmarks/tournament.py --report-only

A full run is long on 2 CPU threads (Kodak alone: 24 images x 10 models x 2 modes, about 2 to 5 minutes a
cell); run it on a quiet machine: equal-time cells measure the machine as well as the model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOC, ROOT, SHARED_DATA, machine, markdown_table, write_results  # noqa: E402

NAME = "tournament"
RESULTS = ROOT / "benchmarks" / "results" / f"{NAME}.json"
FIGURES = ROOT / "docs" / "figures"
README = ROOT / "README.md"
MESHES = {"bunny": "bunny00.off", "armadillo": "armadillo.off"}
MODES = ("steps", "time")
METRICS = {"image": ("psnr", "ssim"), "sdf": ("iou_grid", "chamfer_l1", "normal_consistency")}
ITEM = {"image": "image", "sdf": "mesh"}
SCALE = {"chamfer_l1": 1e3}  # shown in units of 1e-3 (of the bounding box's longest side)


def default_models(task: str) -> list[str]:
    from gridfield import presets

    return presets.models(task) if task != "nerf" else ["dense", "hash", "planes", "mulfagrid"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["image", "sdf", "nerf"], choices=["image", "sdf", "nerf"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--models", nargs="+", default=None, help="models (default: every preset of the task)")
    p.add_argument("--images", nargs="+", default=None, help="Kodak stems (default: all 24)")
    p.add_argument("--meshes", nargs="+", default=list(MESHES), choices=list(MESHES))
    p.add_argument("--image-steps", type=int, default=2000)
    p.add_argument("--image-seconds", type=float, default=120.0)
    p.add_argument("--image-batch", type=int, default=1 << 16)
    p.add_argument("--image-budget", type=int, default=300_000)
    p.add_argument("--sdf-steps", type=int, default=2000)
    p.add_argument("--sdf-seconds", type=float, default=120.0)
    p.add_argument("--sdf-budget", type=int, default=2_000_000)
    p.add_argument("--iou-resolution", type=int, default=256)
    p.add_argument("--nerf-seconds", type=float, default=300.0)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--report-only", action="store_true", help="rewrite the tables from the JSON, run nothing")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- cells


def cell_settings(args, task: str, mode: str, model: str) -> dict:
    """What a finished cell must have been run with to be reused, including a fingerprint of the model's
    preset (:func:`spec_fingerprint`), so that a changed preset reruns its cells."""
    spec = {"spec": spec_fingerprint(task, model, args)}
    if task == "image":
        budget = {"steps": args.image_steps} if mode == "steps" else {"seconds": args.image_seconds}
        return {"batch": args.image_batch, "param_budget": args.image_budget, "threads": args.threads, **budget,
                **spec}
    budget = {"steps": args.sdf_steps} if mode == "steps" else {"seconds": args.sdf_seconds}
    return {"param_budget": args.sdf_budget, "iou_resolution": args.iou_resolution, "threads": args.threads,
            **budget, **spec}


def spec_fingerprint(task: str, model: str, args) -> str:
    """Short hash of the preset a cell trains: its field spec (``to_dict``) and learning rates."""
    from gridfield.presets import image_field_spec, image_lr
    from gridfield.presets.sdf import sdf_field_spec

    if task == "image":  # Kodak images are RGB
        spec, lr = image_field_spec(model, 3, args.image_budget), image_lr(model)
    else:
        spec, lr = sdf_field_spec(model, args.sdf_budget), (1e-2, 1e-2)
    text = json.dumps({"spec": spec.to_dict(), "lr": list(lr)}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def run_image_cell(args, mode: str, model: str, path: Path) -> dict:
    import torch

    from gridfield.data.images import load_image
    from gridfield.models import count_parameters
    from gridfield.presets import image_field_spec, image_lr
    from gridfield.tasks.image import fit_image
    from gridfield.training import TrainConfig

    img = load_image(str(path))
    torch.manual_seed(0)
    field = image_field_spec(model, img.shape[-1], args.image_budget).build()
    lr_grid, lr_other = image_lr(model)
    if mode == "steps":
        cfg = TrainConfig(steps=args.image_steps, seed=0, progress=False, checkpoint_every=0)
    else:
        cfg = TrainConfig(steps=10**7, time_budget=args.image_seconds, seed=0, progress=False, checkpoint_every=0)
    res = fit_image(field, img, batch_size=args.image_batch, lr_grid=lr_grid, lr_other=lr_other,
                    eval_every=10**7, train_cfg=cfg)
    m = res.metrics
    return {"psnr": m["psnr"], "ssim": m["ssim"], "steps": m["steps"], "train_seconds": m["train_seconds"],
            "params": count_parameters(field)}


def run_sdf_cell(args, mode: str, model: str, path: Path) -> dict:
    from gridfield.tasks.sdf import SDFConfig, run
    from gridfield.training import TrainConfig

    steps, budget = (args.sdf_steps, None) if mode == "steps" else (10**7, args.sdf_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        train = TrainConfig(steps=steps, time_budget=budget, lr_grid=1e-2, lr_other=1e-2, progress=False,
                            checkpoint_every=0, out=Path(tmp) / "out")
        cfg = SDFConfig(mesh=str(path), model=model, param_budget=args.sdf_budget,
                        iou_resolution=args.iou_resolution, mesh_resolution=args.iou_resolution, train=train)
        m = run(cfg)
    keep = ("iou_grid", "iou_points", "chamfer_l1", "normal_consistency", "steps", "train_seconds", "params")
    return {k: m.get(k) for k in keep}


def load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"benchmark": NAME, "cells": {}}


def save(results: dict) -> None:
    """Atomic write of the cells (an interrupted run loses at most the cell in progress)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_name(RESULTS.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, RESULTS)


def run_cells(args, results: dict, task: str) -> None:
    """Run the missing cells of ``task`` (image or sdf), saving after each."""
    if task == "image":
        folder = SHARED_DATA / "kodak"
        items = {p.stem: p for p in sorted(folder.glob("kodim*.png"))}
        if args.images:
            items = {k: v for k, v in items.items() if k in set(args.images)}
        runner = run_image_cell
    else:
        folder = SHARED_DATA / "meshes"
        items = {m: folder / MESHES[m] for m in args.meshes if (folder / MESHES[m]).is_file()}
        runner = run_sdf_cell
    if not items:
        print(f"{task}: skipped (no data in {folder})")
        return
    models = args.models or default_models(task)
    for mode in args.modes:
        for item, path in items.items():
            for model in models:
                want = cell_settings(args, task, mode, model)
                key = f"{task}/{mode}/{model}/{item}"
                old = results["cells"].get(key)
                if old is not None and old["settings"] == want:
                    continue
                t0 = time.perf_counter()
                out = runner(args, mode, model, path)
                results["cells"][key] = {"task": task, "mode": mode, "model": model, "item": item,
                                         "settings": want, "machine": machine(), "load_average": os.getloadavg()[0],
                                         "wall_seconds": time.perf_counter() - t0, **out}
                save(results)
                shown = ", ".join(f"{k} {out[k]:.4g}" for k in METRICS[task] if out.get(k) is not None)
                print(f"{key}: {shown}, {out['steps']} steps, {out['train_seconds']:.0f} s", flush=True)


def run_nerf(args) -> None:
    import nerf_lego

    models = args.models or default_models("nerf")
    nerf_lego.main(["--models", *models, "--time-budget", str(args.nerf_seconds), "--name", f"{NAME}_nerf",
                    "--threads", str(args.threads), "--out", str(ROOT / "outputs" / f"bench_{NAME}_nerf")])


# ---------------------------------------------------------------------------------------------- report


def table(cells: list[dict], task: str) -> tuple[list[dict], list[str]]:
    """One row per model: the mean of each metric per mode over the items both modes ran."""
    metrics = METRICS[task]
    rows = []
    for model in dict.fromkeys(c["model"] for c in cells):
        row: dict = {"model": model}
        for mode in MODES:
            mine = [c for c in cells if c["model"] == model and c["mode"] == mode]
            if not mine:
                continue
            row[f"{mode}: n"] = len(mine)
            for k in metrics:
                vals = [c[k] * SCALE.get(k, 1.0) for c in mine if c.get(k) is not None]
                row[f"{mode}: {label(k)}"] = sum(vals) / len(vals) if vals else None
            row[f"{mode}: steps"] = round(sum(c["steps"] for c in mine) / len(mine))
            row[f"{mode}: s"] = sum(c["train_seconds"] for c in mine) / len(mine)
            row["params"] = f"{mine[0]['params']:,}"
        rows.append(row)
    cols = ["model", "params"] + [f"{m}: {k}" for m in MODES for k in ("n", *map(label, metrics), "steps", "s")]
    return rows, [c for c in cols if any(c in r for r in rows)]


def label(metric: str) -> str:
    return f"{metric} (x1e-3)" if metric in SCALE else metric


def per_item(cells: list[dict], task: str) -> tuple[list[dict], list[str]]:
    """One row per image / mesh: each model's main metric per mode (``steps`` / ``time``)."""
    key = METRICS[task][0]
    models = list(dict.fromkeys(c["model"] for c in cells))
    rows = []
    for item in sorted({c["item"] for c in cells}):
        row = {ITEM[task]: item}
        for c in cells:
            if c["item"] == item and c.get(key) is not None:
                row[f"{c['model']} ({c['mode']})"] = c[key]
        rows.append(row)
    cols = [ITEM[task]] + [f"{m} ({mode})" for mode in MODES for m in models]
    return rows, [c for c in cols if any(c in r for r in rows)]


def plot(cells: list[dict], task: str, path: Path) -> None:
    """Per model, the main metric's mean (bars: equal steps, equal time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = METRICS[task][0]
    models = list(dict.fromkeys(c["model"] for c in cells))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(models) + 2), 3.2))
    for j, mode in enumerate(MODES):
        means = []
        for m in models:
            vals = [c[key] for c in cells if c["model"] == m and c["mode"] == mode and c.get(key) is not None]
            means.append(sum(vals) / len(vals) if vals else math.nan)
        ax.bar([i + 0.4 * j - 0.2 for i in range(len(models))], means, width=0.4, label=f"equal {mode}")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    finite = [c[key] for c in cells if c.get(key) is not None]
    if finite and key != "chamfer_l1":
        ax.set_ylim(min(finite) - 0.05 * abs(min(finite)) if key == "psnr" else min(finite) * 0.98, None)
    ax.set_ylabel(f"mean {key}")
    ax.set_title(f"tournament: {task}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


NERF_COLUMN = "nerf psnr (time)"


def nerf_results() -> dict | None:
    """The NeRF part's results (``benchmarks/nerf_lego.py``'s JSON under this benchmark's name), if run."""
    path = RESULTS.with_name(f"{NAME}_nerf.json")
    return json.loads(path.read_text()) if path.exists() else None


def summary(results: dict, nerf: dict | None = None) -> str:
    """Model x task: each task's main metric at equal steps / equal time (means over the items run), and
    with ``nerf`` (:func:`nerf_results`) each model's lego PSNR on all its test views at equal time."""
    tasks = [t for t in ("image", "sdf") if any(c["task"] == t for c in results["cells"].values())]
    nerf_rows = {r["model"]: r for r in (nerf or {}).get("results", [])}
    models = list(dict.fromkeys([c["model"] for c in results["cells"].values()] + list(nerf_rows)))
    rows = []
    for m in models:
        row = {"model": m}
        for t in tasks:
            key = METRICS[t][0]
            for mode in MODES:
                vals = [c[key] for c in results["cells"].values()
                        if c["task"] == t and c["model"] == m and c["mode"] == mode and c.get(key) is not None]
                n = len(vals)
                row[f"{t} {key} ({mode})"] = f"{sum(vals) / n:.4g} (n={n})" if n else ""
        if m in nerf_rows:
            r = nerf_rows[m]
            row[NERF_COLUMN] = f"{r['psnr']:.4g} ({r['n_test_views']} views)"
        rows.append(row)
    cols = ["model"] + [f"{t} {METRICS[t][0]} ({mode})" for t in tasks for mode in MODES]
    return markdown_table(rows, cols + ([NERF_COLUMN] if nerf_rows else []))


def to_markdown(results: dict, args) -> str:
    cells = list(results["cells"].values())
    parts = ["## Tournament: every model, every task, equal parameters, equal steps / equal time",
             "", "`python benchmarks/tournament.py` (resumable per cell; see its docstring for the protocol). "
             "Means over the images / meshes each model has run (n); a model with fewer cells than another is "
             "not yet comparable with it. Equal-time cells depend on the machine's load (recorded per cell); the "
             "`steps: s` column is the training time of the equal-steps cells, some of which ran beside other "
             "jobs, so compare speeds through the equal-time steps."]
    for task in ("image", "sdf"):
        mine = [c for c in cells if c["task"] == task]
        if not mine:
            continue
        rows, cols = table(mine, task)
        dates = sorted({c["machine"]["date"] for c in mine})
        cpu = mine[0]["machine"]["cpu"]
        s = mine[0]["settings"]
        parts += ["", f"### {task}", "", f"{cpu}, {s['threads']} torch threads, {dates[0]} to {dates[-1]}; "
                  f"settings per mode: " + "; ".join(sorted({json.dumps({k: v for k, v in c["settings"].items()
                                                                    if k != "spec"}) for c in mine})), "",
                  markdown_table(rows, cols), "", f"Per {ITEM[task]} "
                  f"({METRICS[task][0]}):", "", markdown_table(*per_item(mine, task)), "",
                  f"![{task}](figures/{NAME}_{task}.png)"]
        plot(mine, task, FIGURES / f"{NAME}_{task}.png")
    nerf = nerf_results()
    if nerf is not None:
        secs = nerf["settings"].get("time_budget")
        parts += ["", f"NeRF (lego, {secs:g} s of training per model, equal time only; curves, speeds and settings in "
                  "the `tournament_nerf` section):", "",
                  markdown_table(nerf["results"], ["model", "psnr", "ssim", "steps", "params", "n_test_views"])]
    else:
        parts += ["", "NeRF: not run yet (`--tasks nerf`); until then the 5-minute point of the lego "
                  "time-to-PSNR curve in the `nerf_lego` section (10 fixed test views) is the equal-time comparison."]
    return "\n".join(parts)


def write_readme_summary(text: str) -> None:
    begin, end = "<!-- BEGIN tournament-summary -->", "<!-- END tournament-summary -->"
    readme = README.read_text()
    if begin in readme and end in readme:
        readme = readme[: readme.index(begin) + len(begin)] + "\n" + text + "\n" + readme[readme.index(end):]
        README.write_text(readme)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = load()
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        for task in args.tasks:
            if task == "nerf":
                run_nerf(args)
            else:
                run_cells(args, results, task)
    if not results["cells"]:
        print("no cells recorded yet; nothing to report")
        return 0
    write_results(NAME, results, to_markdown(results, args))
    write_readme_summary(summary(results, nerf_results()))
    print(DOC.relative_to(ROOT), "updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
