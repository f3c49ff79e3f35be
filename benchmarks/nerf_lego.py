"""Novel view synthesis benchmark on NeRF-synthetic lego (``../shared/data/lego``, 400x400, 100 train
and 200 test views, white background): test PSNR / SSIM, train seconds and rays per second per model.

Usage::

    python benchmarks/nerf_lego.py --models dense --time-budget 1200 --steps 100000
    python benchmarks/nerf_lego.py --models dense hash --steps 500 --test-views 10   # quick look

Writes ``benchmarks/results/nerf_lego.json`` and the ``nerf_lego`` section of ``docs/benchmarks.md``
(machine, date, settings, load average). Skips (exit 0) when the scene is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED_DATA, machine, markdown_table, write_results  # noqa: E402

COLUMNS = ["model", "appearance", "psnr", "ssim", "train_seconds", "steps", "rays_per_second",
           "eval_rays_per_second", "params", "n_test_views"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, default=SHARED_DATA / "lego")
    ap.add_argument("--models", nargs="+", default=["dense"])
    ap.add_argument("--appearance", choices=["sh", "mlp"], default=None)
    ap.add_argument("--steps", type=int, default=100_000, help="step limit (the time budget usually ends first)")
    ap.add_argument("--time-budget", type=float, default=1200.0, help="training seconds per model")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch-rays", type=int, default=4096)
    ap.add_argument("--test-views", type=int, default=None, help="evenly spaced test views (default: all 200)")
    ap.add_argument("--downscale", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_nerf_lego"))
    ap.add_argument("--resume", action="store_true", help="continue interrupted runs (same --out and options)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update results/docs")
    ap.add_argument("--name", default="nerf_lego", help="results name (JSON file and docs section)")
    args = ap.parse_args(argv)
    if not (args.scene / "transforms_train.json").is_file():
        print(f"skipping: lego scene not found at {args.scene}")
        return 0
    import torch

    from gridfield.tasks.nerf import NerfConfig, run
    from gridfield.training import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    rows = []
    for model in args.models:
        cfg = NerfConfig(scene=args.scene, model=model, appearance=args.appearance, resolution=args.resolution,
                         batch_rays=args.batch_rays, test_views=args.test_views, downscale=args.downscale,
                         save_renders=8, turntable_frames=0,
                         train=TrainConfig(steps=args.steps, time_budget=args.time_budget, out=args.out / model,
                                           progress=sys.stderr.isatty(), resume=args.resume))
        m = run(cfg)
        rows.append({c: m[c] for c in COLUMNS})
        print(markdown_table(rows[-1:], COLUMNS), flush=True)
    info = machine()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"machine": info, "settings": settings, "load_average_at_start": load, "results": rows}
    md = (f"## NeRF-synthetic lego (novel view synthesis): {args.name}\n\n"
          f"{info['date']}, {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads, "
          f"device {info['device']}); load average at start {load[0]:.1f}. 400x400 / downscale "
          f"{args.downscale}, white background, training budget {args.time_budget:.0f} s or {args.steps} steps, "
          f"{args.batch_rays} rays per step, final resolution {args.resolution}, "
          f"{rows[0]['n_test_views'] if rows else 0} test views. PSNR and SSIM (11x11 Gaussian, sigma 1.5) are "
          f"means over test views. Script: `benchmarks/nerf_lego.py`.\n\n" + markdown_table(rows, COLUMNS))
    if not args.no_write:
        write_results(args.name, payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
