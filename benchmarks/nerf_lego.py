"""Novel view synthesis benchmark on NeRF-synthetic lego (``../shared/data/lego``, 400x400, 100 train
and 200 test views, white background): an equal-time comparison of the grid models.

Each model trains for the same ``--time-budget`` of training-clock seconds (rendering the curve views
is not counted) in its own process (``gridfield nerf``), so its peak RSS is its own. During training
it renders ``--curve-views`` evenly spaced test views at the ``--curve-seconds`` (a time-to-PSNR
curve); at the end every test view (the standard protocol: 200) is rendered for PSNR and SSIM.

Usage::

    python benchmarks/nerf_lego.py --models dense hash planes mulfagrid --time-budget 1200
    python benchmarks/nerf_lego.py --models dense hash --time-budget 120 --test-views 10 --name quick
    python benchmarks/nerf_lego.py --models hash --time-budget 300 --lr-schedule step --no-write --out /tmp/step

Resumable per model: a model whose run finished (``OUT/MODEL/metrics.json`` with the same settings)
is not run again, an interrupted one continues from its saved training state. Writes
``benchmarks/results/NAME.json``, the figure ``docs/figures/NAME_curve.png`` and the ``NAME`` section
of ``docs/benchmarks.md`` (machine, date, settings, load average). Skips (exit 0) without the scene.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, SHARED_DATA, lego_present, machine, markdown_table, probe_text, write_results  # noqa: E402

COLUMNS = ["model", "psnr", "ssim", "train_seconds", "steps", "rays_per_second", "eval_rays_per_second",
           "samples_per_ray", "params", "peak_rss_gib", "n_test_views", "run_date"]
CURVE_SECONDS = [30, 60, 120, 180, 300, 450, 600, 900, 1200]
# the options of a run that must match for a finished run to be reused
SAME = ("model", "resolution", "batch_rays", "downscale", "test_views", "curve_views", "lr_schedule")


def command(args, model: str, out: Path, resume: bool) -> list[str]:
    """The ``gridfield nerf`` command line of one model's run."""
    seconds = [s for s in args.curve_seconds if s < args.time_budget]
    cmd = [sys.executable, "-c", "from gridfield.cli import entry; entry()", "nerf", str(args.scene),
           "--model", model, "--resolution", str(args.resolution), "--batch-rays", str(args.batch_rays),
           "--downscale", str(args.downscale), "--steps", str(args.steps), "--time-budget", str(args.time_budget),
           "--save-renders", "8", "--turntable-frames", "0", "--curve-views", str(args.curve_views),
           "--lr-schedule", args.lr_schedule, "--out", str(out), "--no-progress"]
    if seconds:
        cmd += ["--curve-seconds", *[str(s) for s in seconds]]
    if args.test_views:
        cmd += ["--test-views", str(args.test_views)]
    return cmd + (["--resume"] if resume else [])


def finished(path: Path, args, model: str) -> dict | None:
    """The metrics of a finished run of ``model`` with this benchmark's settings, else None."""
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    c = m.get("config", {})
    want = {"model": model, "resolution": args.resolution, "batch_rays": args.batch_rays,
            "downscale": args.downscale, "test_views": args.test_views, "curve_views": args.curve_views,
            "lr_schedule": args.lr_schedule}
    c = {"lr_schedule": "exp", **c}  # runs from before the option had the exponential decay
    same = all(c.get(k) == want[k] for k in SAME) and c.get("train", {}).get("time_budget") == args.time_budget
    return m if same else None


def run_model(args, model: str) -> dict:
    """Train and evaluate ``model`` in a child process (or reuse its finished run); its metrics and peak RSS."""
    out = args.out / model
    done = finished(out / "metrics.json", args, model)
    if done is not None:
        print(f"{model}: reusing the finished run in {out}", flush=True)
        return done
    from gridfield.training import state_path_for

    resume = state_path_for(out).is_file()
    print(f"{model}: {'resuming' if resume else 'starting'} ({args.time_budget:.0f} s of training)", flush=True)
    t0 = time.time()
    proc = subprocess.Popen(command(args, model, out, resume), env=os.environ | {"OMP_NUM_THREADS": str(args.threads)})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{model}: gridfield nerf failed (exit {proc.returncode}); rerun to resume it")
    m = json.loads((out / "metrics.json").read_text())
    m["peak_rss_gib"] = usage.ru_maxrss / 2**20  # KiB on Linux
    m["wall_seconds"] = time.time() - t0
    (out / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
    return m


def curve(out: Path, m: dict, n_views: int) -> list[tuple[float, float]]:
    """``(training seconds, PSNR on the curve views)`` during training, ending with the final model."""
    rows = json.loads((out / "history.json").read_text())
    pts = [(r["seconds"], r["curve_psnr"]) for r in rows if "curve_psnr" in r]
    from gridfield.tasks.nerf_eval import evenly_spaced

    if m["config"]["test_views"] is None:  # the final evaluation covered every test view, the curve's too
        views = evenly_spaced(len(m["psnr_per_view"]), n_views)
        pts.append((m["train_seconds"], sum(m["psnr_per_view"][i] for i in views) / len(views)))
    return pts


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for model, pts in curves.items():
        if pts:
            ax.plot([s / 60 for s, _ in pts], [p for _, p in pts], marker="o", ms=3, label=model)
    ax.set_xlabel("training time (minutes, 2 CPU threads)")
    ax.set_ylabel("test PSNR (dB), 10 fixed views")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, default=SHARED_DATA / "lego")
    ap.add_argument("--models", nargs="+", default=["dense", "hash", "planes", "mulfagrid"])
    ap.add_argument("--steps", type=int, default=1_000_000, help="step limit (the time budget ends first)")
    ap.add_argument("--time-budget", type=float, default=1200.0, help="training seconds per model")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch-rays", type=int, default=4096)
    ap.add_argument("--test-views", type=int, default=None, help="evenly spaced test views (default: all 200)")
    ap.add_argument("--curve-views", type=int, default=10, help="test views of the time-to-PSNR curve")
    ap.add_argument("--curve-seconds", type=float, nargs="+", default=CURVE_SECONDS)
    ap.add_argument("--downscale", type=int, default=1)
    ap.add_argument("--lr-schedule", choices=["exp", "step"], default="exp",
                    help="learning-rate decay (gridfield nerf --lr-schedule)")
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of each run")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_nerf_lego"))
    ap.add_argument("--no-write", action="store_true", help="print only; do not update results/docs")
    ap.add_argument("--name", default="nerf_lego", help="results name (JSON file, figure and docs section)")
    args = ap.parse_args(argv)
    if not lego_present(args.scene):
        return 0
    args.out = args.out.resolve()
    load = os.getloadavg()
    rows, curves = [], {}
    for model in args.models:
        m = run_model(args, model)
        rows.append({c: m.get(c) for c in COLUMNS} | {"run_date": str(m.get("date", ""))[:10]})  # a reused run: its own
        curves[model] = curve(args.out / model, m, args.curve_views)
        print(markdown_table(rows[-1:], COLUMNS), flush=True)
    info = machine()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"machine": info, "settings": settings, "load_average_at_start": load, "results": rows,
               "curves": curves}
    fig = ROOT / "docs" / "figures" / f"{args.name}_curve.png"
    title = (f"lego 400x400 / {args.downscale}, {args.batch_rays} rays per step, {info['cpu']}, {info['date']}")
    times = [s for s in args.curve_seconds if s < args.time_budget] + [args.time_budget]
    lines = ["| model | " + " | ".join(f"{s / 60:.3g} min" for s in times) + " |", "|---|" + "---|" * len(times)]
    for model, pts in curves.items():  # each time: the first curve point at or after it (rendered then)
        cells = [next((f"{p:.2f}" for t, p in pts if t >= s - 1e-6), "") for s in times]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    md = (f"## NeRF-synthetic lego (novel view synthesis): {args.name}\n\n"
          f"{info['date']}, {info['cpu']} ({info['cores']} cores, {args.threads} threads per run, "
          f"device {info['device']}; {probe_text(info)} after the runs); load average at start {load[0]:.1f}. "
          f"400x400 / downscale {args.downscale}, white background, {args.time_budget:.0f} s of training per model "
          f"(the training clock; curve renders excluded), {args.batch_rays} rays per step, "
          f"{rows[0]['n_test_views'] if rows else 0} test views for the final PSNR and SSIM (11x11 Gaussian, "
          f"sigma 1.5; means over views). Peak RSS of each model's process. Script: `benchmarks/nerf_lego.py`.\n\n"
          + markdown_table(rows, COLUMNS)
          + f"\n\nTime-to-PSNR on {args.curve_views} fixed test views (the first point at or after each time; the "
          f"last column is the final model): ![time to PSNR](figures/{fig.name})\n\n" + "\n".join(lines))
    if not args.no_write:
        plot(curves, fig, title)
        write_results(args.name, payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
