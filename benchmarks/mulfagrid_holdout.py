"""Hold-out (generalization) PSNR on astronaut: MulFAGrid (both forms) beside the grid and MLP baselines.

Half the pixels (random, fixed seed) are held out; each model is fitted on the other half with
``gridfield.tasks.image.fit_image`` at a matched parameter budget (``gridfield.presets``) and scored
on the training pixels (``psnr``) and the held-out ones (``test_psnr``). Writes
``benchmarks/results/mulfagrid_holdout.json`` and its section of ``docs/benchmarks.md``.

    .venv/bin/python benchmarks/mulfagrid_holdout.py --max-size 256 --budget 50000 --steps 300
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_results  # noqa: E402
from gridfield import presets  # noqa: E402
from gridfield.data.images import load_image  # noqa: E402
from gridfield.models import count_parameters  # noqa: E402
from gridfield.tasks.image import fit_image  # noqa: E402

#: models in table order; learning rates come from ``gridfield.presets.image_lr`` (the Kodak ones).
MODELS = ("dense", "hash", "planes", "mulfagrid", "mulfagrid-paper", "ffmlp", "mfn")


def merge(rows: list[dict], settings: dict) -> list[dict]:
    """``rows`` plus the earlier results of other models measured with the same settings (by model)."""
    path = Path(__file__).resolve().parent / "results" / "mulfagrid_holdout.json"
    if not path.exists():
        return rows
    old = json.loads(path.read_text())
    if old.get("settings") != settings:
        return rows
    done = {r["model"] for r in rows}
    order = list(MODELS)
    merged = [r for r in old["results"] if r["model"] not in done] + rows
    return sorted(merged, key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="astronaut")
    ap.add_argument("--max-size", type=int, default=256)
    ap.add_argument("--budget", type=int, default=50_000, help="parameter budget per model")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--holdout", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    image = load_image(args.image, max_size=args.max_size)
    rows = []
    for model in args.models.split(","):
        if model not in MODELS:
            raise SystemExit(f"error: unknown model {model!r}; choose from {list(MODELS)}")
        lr_grid, lr_other = presets.image_lr(model)
        torch.manual_seed(args.seed)
        spec = presets.get("image", model, out_dim=image.shape[-1], param_budget=args.budget)
        field = spec.build()
        t0 = time.time()
        res = fit_image(field, image, steps=args.steps, batch_size=args.batch_size, lr_grid=lr_grid,
                        lr_other=lr_other, holdout=args.holdout, seed=args.seed, progress=False,
                        eval_every=args.steps)
        row = {"model": model, "params": count_parameters(field), "train_psnr": res.metrics["psnr"],
               "test_psnr": res.metrics["test_psnr"], "train_s": res.metrics["train_seconds"],
               "wall_s": time.time() - t0, "lr_grid": lr_grid, "lr_other": lr_other,
               "config": spec.grid_kwargs.to_dict()}
        rows.append(row)
        print(f"{model:16s} params {row['params']:7d} train {row['train_psnr']:6.2f} dB "
              f"test {row['test_psnr']:6.2f} dB  {row['train_s']:6.1f} s", flush=True)
    settings = {k: getattr(args, k) for k in ("image", "max_size", "budget", "steps", "batch_size",
                                              "holdout", "seed", "threads")}
    payload = {"machine": machine(), "settings": settings, "results": merge(rows, settings)}
    rows = payload["results"]
    if not args.no_write:
        md = (f"## MulFAGrid hold-out (generalization) on {args.image}\n\n"
              f"`benchmarks/mulfagrid_holdout.py`: {args.image} resized to max side {args.max_size}, "
              f"{args.holdout:.0%} of the pixels held out at random (seed {args.seed}), "
              f"{args.steps} Adam steps of {args.batch_size} random training pixels, cosine decay, "
              f"budget {args.budget} parameters, {payload['machine']['date']}, {payload['machine']['cpu']}, "
              f"{args.threads} threads (shared machine: times are indicative).\n\n"
              + markdown_table(rows, ["model", "params", "train_psnr", "test_psnr", "train_s", "lr_grid",
                                      "lr_other"]))
        write_results("mulfagrid_holdout", payload, md)
    return payload


if __name__ == "__main__":
    main()
