"""Kodak image fitting: every image model at ~300K parameters, a fixed step budget, PSNR/SSIM/time.

Usage (from the project root)::

    python benchmarks/image_kodak.py                                  # all models, all 24 images
    python benchmarks/image_kodak.py --models hash --images kodim01 kodim02 --steps 500

Results are MERGED by model into ``benchmarks/results/image_kodak.json`` (a later run of one model
keeps the others) and the ``image_kodak`` section of ``docs/benchmarks.md`` is rewritten from the
merged file. Skips cleanly when ``../shared/data/kodak`` is absent.
Reference (GaussianImage's table, GPU, long training, ~300K params): Instant-NGP 43.88 dB mean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, SHARED_DATA, machine, markdown_table, write_results  # noqa: E402

NAME = "image_kodak"
RESULTS = ROOT / "benchmarks" / "results" / f"{NAME}.json"
REFERENCE = {"Instant-NGP": 43.88, "NeuRBF": 43.78, "GaussianImage": 44.08, "SIREN": 40.83, "WIRE": 41.47}


def parse_args(argv=None) -> argparse.Namespace:
    from gridfield.presets import image_models

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=image_models(), help="models to run (default: all registered)")
    p.add_argument("--images", nargs="+", default=None, help="image stems, e.g. kodim01 (default: all)")
    p.add_argument("--steps", type=int, default=2000, help="Adam steps per image")
    p.add_argument("--batch-size", type=int, default=1 << 16, help="random pixels per step (0: full image)")
    p.add_argument("--budget", type=int, default=300_000, help="parameter budget of the presets")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--data", type=Path, default=SHARED_DATA / "kodak", help="folder with kodimNN.png")
    p.add_argument("--report-only", action="store_true", help="rewrite the markdown from the JSON, run nothing")
    return p.parse_args(argv)


def run_model(model: str, files: list[Path], args) -> dict:
    """Fit ``model`` to every file; per-image metrics and means."""
    import torch

    from gridfield.data.images import load_image
    from gridfield.models import count_parameters
    from gridfield.presets import image_field, image_lr
    from gridfield.tasks.image import fit_image

    lr_grid, lr_other = image_lr(model)
    per_image = {}
    for f in files:
        img = load_image(str(f))
        torch.manual_seed(0)
        field = image_field(model, img.shape[-1], args.budget).to("cuda" if torch.cuda.is_available() else "cpu")
        t0 = time.perf_counter()
        res = fit_image(field, img, steps=args.steps, batch_size=args.batch_size or None, lr_grid=lr_grid,
                        lr_other=lr_other, seed=0, progress=False, eval_every=args.steps)
        m = res.metrics
        per_image[f.stem] = {"psnr": m["psnr"], "ssim": m["ssim"], "train_seconds": m["train_seconds"],
                             "wall_seconds": time.perf_counter() - t0, "shape": list(img.shape)}
        print(f"{model:>8} {f.stem}: {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, {m['train_seconds']:.1f} s",
              flush=True)
    vals = list(per_image.values())
    mean = lambda k: sum(v[k] for v in vals) / len(vals)  # noqa: E731
    return {"params": count_parameters(field), "lr_grid": lr_grid, "lr_other": lr_other,
            "steps": args.steps, "batch_size": args.batch_size or None, "budget": args.budget,
            "machine": machine(), "images": per_image, "n_images": len(vals), "mean_psnr": mean("psnr"),
            "mean_ssim": mean("ssim"), "mean_train_seconds": mean("train_seconds")}


def merge(results: dict, new: dict) -> dict:
    """Replace the entries of the models in ``new`` and keep every other model's."""
    models = dict(results.get("models", {}))
    models.update(new)
    return {"benchmark": NAME, "reference_psnr": REFERENCE, "models": models}


def to_markdown(results: dict) -> str:
    """Summary table (one row per model), per-image PSNR table, and the published reference."""
    models = results["models"]
    rows = [{"model": m, "params": f"{r['params']:,}", "steps": r["steps"], "batch": r["batch_size"] or "full",
             "images": r["n_images"], "mean PSNR (dB)": r["mean_psnr"], "mean SSIM": r["mean_ssim"],
             "mean train s/image": r["mean_train_seconds"], "device": r["machine"]["device"],
             "threads": r["machine"]["torch_threads"], "date": r["machine"]["date"]} for m, r in models.items()]
    cols = ["model", "params", "steps", "batch", "images", "mean PSNR (dB)", "mean SSIM", "mean train s/image",
            "device", "threads", "date"]
    names = sorted({i for r in models.values() for i in r["images"]})
    per = [{"image": i, **{f"{m} PSNR": r["images"][i]["psnr"] for m, r in models.items() if i in r["images"]},
            **{f"{m} s": r["images"][i]["train_seconds"] for m, r in models.items() if i in r["images"]}}
           for i in names]
    pcols = ["image"] + [f"{m} PSNR" for m in models] + [f"{m} s" for m in models]
    cpu = next(iter(models.values()))["machine"]["cpu"] if models else ""
    ref = ", ".join(f"{k} {v}" for k, v in REFERENCE.items())
    return (f"## Kodak image fitting (~300K parameters)\n\n`python benchmarks/image_kodak.py` "
            f"(presets from `gridfield.presets.image_field`, Adam, cosine decay, seed 0). CPU: {cpu}.\n"
            f"Each model row is from its own run (see date, steps, images). Train seconds are the wall time "
            f"of the training loop at the time: runs on a machine shared with other jobs are slower, so "
            f"compare times only within one run.\n\n"
            f"{markdown_table(rows, cols)}\n\nPer image (PSNR in dB, train seconds):\n\n"
            f"{markdown_table(per, pcols)}\n\nPublished reference (GaussianImage's table, GPU, long "
            f"training, all 24 images): {ref} dB.\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        results = json.loads(RESULTS.read_text())
        write_results(NAME, results, to_markdown(results))
        return 0
    if not args.data.is_dir():
        print(f"skipped: Kodak images not found at {args.data}")
        return 0
    files = sorted(args.data.glob("kodim*.png"))
    if args.images:
        files = [f for f in files if f.stem in set(args.images)]
    if not files:
        print(f"skipped: no matching kodim*.png in {args.data}")
        return 0
    import torch

    from gridfield.presets import image_models

    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = sorted(set(args.models) - set(image_models()))
    if unknown:
        print(f"error: unknown model(s) {unknown}; choose from {image_models()}", file=sys.stderr)
        return 2
    new = {m: run_model(m, files, args) for m in args.models}
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results = merge(old, new)
    write_results(NAME, results, to_markdown(results))
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
