"""NeRF on captures (issue #14): the fox and a forward-facing LLFF scene, PSNR/SSIM on every 8th frame.

Cells (one per scene and ``--models`` model, hash by default):

* ``fox``: ``../shared/data/fox`` (Instant-NGP's transforms.json, 50 photos of 1080x1920) at ``--fox-downscale``
  (4: 270x480), ``--fox-seconds`` (600) of training, PSNR and SSIM on every 8th frame (the loader's split);
  then an orbit video of ``--video-frames`` (120) at ``--video-scale`` times the training resolution (2:
  540x960) through ``gridfield render``'s code path (:func:`gridfield.tasks.nerf_export.run_render_video`),
  timed (issue #14's target: under 5 minutes). Skipped, with a message, without the capture.
* ``llff``: a synthetic forward-facing capture in LLFF's format (``make_scene(layout="llff")``:
  ``--llff-size`` 504x378 like LLFF's 1/8 images, ``--llff-views`` 32) made once into ``OUT/scene``;
  ``--llff-seconds`` (1200) of training at ``--downscale 8`` (the rendered images are LLFF's ``images_8``) with
  the time-to-PSNR curve on every held-out view at ``--llff-curve-seconds`` (600 among them: the 10-minute
  PSNR), then PSNR and SSIM on every held-out view (the 20-minute numbers).

Every run is ``gridfield.tasks.nerf.run(NerfConfig(...))`` in this process with ``--threads`` torch threads.
The scene-space options (``--scene-space``, ``--contraction``, ``--background-model``) are passed only when
given and when this version's ``NerfConfig`` has them; unset, the runs use its defaults.

Resumable per cell: a cell is done when its run folder ``OUT/SCENE-MODEL`` holds a ``metrics.json`` with
this benchmark's settings (and, for the fox, when its video record is newer than the checkpoint); a rerun
skips done cells and an interrupted training continues from its saved state. ``OUT`` is
``benchmarks/results/nerf_captures`` (the summary ``benchmarks/results/nerf_captures.json``). ``--quick``
(20 s of training, the fox at 90x160, LLFF at 64x48 with 16 views, an 8-frame video: every cell end to end
in a few minutes) writes to ``outputs/bench_nerf_captures_quick`` instead and never touches the docs.
``--report-only`` rewrites the section "## Capture benchmarks" of docs/nerf.md from the JSON (machine, date,
budget, PSNR, SSIM, rays/s, render time); a full run rewrites it at the end.

Usage::

    python benchmarks/nerf_captures.py --quick
    python benchmarks/nerf_captures.py                      # fox 10 min + video, llff 20 min (quiet machine)
    python benchmarks/nerf_captures.py --cells llff --models hash dense
    python benchmarks/nerf_captures.py --report-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, SHARED_DATA, machine, markdown_table  # noqa: E402

NAME = "nerf_captures"
DOC = ROOT / "docs" / "nerf.md"
SECTION = "## Capture benchmarks"
CELLS = ("fox", "llff")
#: benchmark option -> NerfConfig field, passed only when given and when NerfConfig has the field
SPACE_OPTIONS = {"scene_space": "scene_space", "contraction": "contraction", "background_model": "background_model"}
COLUMNS = ["cell", "model", "scene_space", "resolution", "budget_s", "psnr_10min", "psnr", "ssim", "n_test_views",
           "steps", "rays_per_second", "video", "render_seconds", "date", "machine"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    p.add_argument("--models", nargs="+", default=["hash"])
    p.add_argument("--fox", type=Path, default=SHARED_DATA / "fox", help="the fox capture (transforms.json)")
    p.add_argument("--fox-downscale", type=int, default=4, help="1080x1920 / this (4: 270x480)")
    p.add_argument("--fox-seconds", type=float, default=600.0, help="training seconds of the fox")
    p.add_argument("--video-frames", type=int, default=120, help="frames of the fox's orbit video")
    p.add_argument("--video-scale", type=float, default=2.0, help="video resolution / training resolution")
    p.add_argument("--llff-size", type=int, nargs=2, default=[504, 378], metavar=("W", "H"),
                   help="synthetic LLFF images (LLFF's 1/8 size)")
    p.add_argument("--llff-views", type=int, default=32)
    p.add_argument("--llff-seconds", type=float, default=1200.0, help="training seconds of the LLFF scene")
    p.add_argument("--llff-curve-seconds", type=float, nargs="+", default=[60, 120, 300, 600, 900],
                   help="training seconds of the time-to-PSNR curve (the final model closes it)")
    p.add_argument("--scene-space", default=None, help="NerfConfig.scene_space of every run (default: its own)")
    p.add_argument("--contraction", default=None, help="NerfConfig.contraction (default: its own)")
    p.add_argument("--background-model", default=None, help="NerfConfig.background_model (default: its own)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--quick", action="store_true", help="tiny budgets, separate folder: a check of every cell")
    p.add_argument("--out", type=Path, default=None, help="run folders (default: see the module docstring)")
    p.add_argument("--report-only", action="store_true", help="rewrite the docs section from the JSON, run nothing")
    args = p.parse_args(argv)
    if args.quick:
        args.fox_downscale, args.fox_seconds, args.video_frames, args.video_scale = 12, 20.0, 8, 1.0  # 90x160
        args.llff_size, args.llff_views, args.llff_seconds, args.llff_curve_seconds = [64, 48], 16, 20.0, [5, 10]
    if args.out is None:
        args.out = ROOT / ("outputs/bench_nerf_captures_quick" if args.quick else f"benchmarks/results/{NAME}")
    args.out = args.out.resolve()
    args.results = args.out / "results.json" if args.quick else ROOT / "benchmarks" / "results" / f"{NAME}.json"
    for name in ("fox_downscale", "video_frames", "llff_views", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("fox_seconds", "llff_seconds", "video_scale"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v > 0):
            p.error(f"--{name.replace('_', '-')} must be finite and > 0, got {v}")
    return args


# ---------------------------------------------------------------------------------------------- runs


def space_options(args) -> dict:
    """The scene-space options given on the command line, as NerfConfig fields; refuses those it lacks."""
    from gridfield.tasks.nerf import NerfConfig

    have = {f.name for f in dataclasses.fields(NerfConfig)}
    given = {field: getattr(args, opt) for opt, field in SPACE_OPTIONS.items() if getattr(args, opt) is not None}
    missing = sorted(set(given) - have)
    if missing:
        raise SystemExit(f"error: this version's NerfConfig has no {', '.join(missing)}; drop "
                         f"{', '.join('--' + m.replace('_', '-') for m in missing)}")
    return given


def nerf_config(args, scene: Path, model: str, out: Path, downscale: int, seconds: float, curve_views: int = 0,
                curve_seconds: tuple[float, ...] = ()):
    """The NerfConfig of one cell (resumes the run of ``out`` when a saved training state exists)."""
    from gridfield.tasks.nerf import NerfConfig
    from gridfield.training import state_path_for

    base = NerfConfig(scene=scene)
    train = dataclasses.replace(base.train, steps=10**7, time_budget=seconds, out=out, progress=False,
                                resume=state_path_for(out).is_file())
    curve = {"curve_views": curve_views, "curve_seconds": tuple(curve_seconds)} if curve_views else {}
    return dataclasses.replace(base, model=model, downscale=downscale, save_renders=4, turntable_frames=0,
                               train=train, **curve, **space_options(args))


def want_config(cfg) -> dict:
    """What a finished run must share with ``cfg`` to count as this cell (the keys of its metrics' config)."""
    from gridfield.training import config_dict

    c = config_dict(cfg)
    keep = ("model", "downscale", "curve_views", "curve_seconds", "test_every", *SPACE_OPTIONS.values())
    return {**{k: c[k] for k in keep if k in c}, "time_budget": c["train"]["time_budget"],
            "scene": str(Path(c["scene"]).resolve())}


def finished(out: Path, want: dict) -> dict | None:
    """The metrics of the finished run in ``out`` when it was run with ``want``'s settings, else None."""
    path = out / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    c = {**m.get("config", {}), "time_budget": m.get("config", {}).get("train", {}).get("time_budget")}
    c["scene"] = str(Path(c.get("scene", "")).resolve())
    same = all(c.get(k) == v for k, v in want.items())
    if not same:
        print(f"{out.name}: the run there has other settings; running it again", flush=True)
    return m if same else None


def train_cell(args, scene: Path, model: str, out: Path, downscale: int, seconds: float, **curve) -> dict:
    """Train and evaluate one cell (or reuse its finished run); its metrics."""
    import torch

    from gridfield.tasks.nerf import run

    cfg = nerf_config(args, scene, model, out, downscale, seconds, **curve)
    done = finished(out, want_config(cfg))
    if done is not None:
        print(f"{out.name}: finished run reused ({out})", flush=True)
        return done
    torch.set_num_threads(args.threads)
    print(f"{out.name}: {'resuming' if cfg.train.resume else 'training'} {seconds:.0f} s ({model}, {scene})",
          flush=True)
    load, t0 = os.getloadavg()[0], time.perf_counter()
    m = run(cfg)
    m["wall_seconds"] = time.perf_counter() - t0
    m["load_average_at_start"] = load
    (out / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")  # kept with the run for a later reuse
    return m


def render_video(args, run_dir: Path, name: str) -> dict:
    """The fox's orbit video through ``gridfield render``'s code path, timed (reused when newer than the
    checkpoint and made with the same frames and scale)."""
    import torch

    from gridfield.tasks.nerf_export import RenderVideoConfig, run_render_video

    record = args.out / f"{name}-video.json"
    ckpt = run_dir / "checkpoint.pt"
    want = {"frames": args.video_frames, "scale": args.video_scale, "checkpoint_mtime": ckpt.stat().st_mtime}
    if record.is_file():
        old = json.loads(record.read_text())
        if all(old.get(k) == v for k, v in want.items()) and Path(old["out"]).is_file():
            print(f"{name}: video reused ({old['out']})", flush=True)
            return old
    torch.set_num_threads(args.threads)
    cfg = RenderVideoConfig(checkpoint=ckpt, path="orbit", frames=args.video_frames, downscale=1 / args.video_scale,
                            out=args.out / f"{name}-orbit.mp4", progress=False)
    t0 = time.perf_counter()
    res = run_render_video(cfg)
    seconds = time.perf_counter() - t0
    rec = {**want, **res, "render_seconds": seconds, "seconds_per_frame": seconds / res["frames"],
           "target_seconds": 300.0, "target_met": seconds < 300.0 if args.video_frames >= 120 else None}
    sheet = (args.out if args.quick else ROOT / "docs" / "figures") / f"{name}_orbit_frames.png"
    rec["sheet"] = str(orbit_sheet(Path(res["out"]), sheet, frames=res["frames"]))
    record.write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def orbit_sheet(video: Path, out: Path, n: int = 8, cols: int = 4, width: int = 270, frames: int | None = None
                ) -> Path:
    """A contact sheet of ``n`` evenly spaced frames of ``video`` (``cols`` per row, each ``width`` pixels
    wide): what a reader looks at to judge the video without playing it. The video is streamed and only the
    picked frames are kept; ``frames`` (the video's frame count, when the caller knows it) saves a counting
    pass."""
    import imageio.v3 as iio
    import numpy as np
    from PIL import Image

    total = frames if frames is not None else sum(1 for _ in iio.imiter(video))
    want = set(np.linspace(0, total - 1, min(n, total)).round().astype(int).tolist())
    pick = [f for i, f in enumerate(iio.imiter(video)) if i in want]
    h = round(pick[0].shape[0] * width / pick[0].shape[1])
    tiles = [np.asarray(Image.fromarray(f[..., :3]).resize((width, h), Image.LANCZOS)) for f in pick]
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
    rows = [np.concatenate(tiles[i : i + cols], 1) for i in range(0, len(tiles), cols)]
    out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, np.concatenate(rows, 0))
    return out


def curve_points(run_dir: Path, m: dict) -> list[tuple[float, float]]:
    """``(training seconds, PSNR on the curve views)`` during training, closed by the final model (the
    curve views are every held-out view, so the final evaluation is the curve's last point)."""
    rows = json.loads((run_dir / "history.json").read_text())
    pts = [(r["seconds"], r["curve_psnr"]) for r in rows if "curve_psnr" in r]
    return pts + [(m["train_seconds"], m["psnr"])]


def summary(cell: str, model: str, m: dict, res: str, video: dict | None, pts=None) -> dict:
    """One row of the results: the run's numbers, its machine and date."""
    c = m.get("config", {})
    at10 = next((p for t, p in (pts or []) if t >= 600 - 1e-6), None) if pts else None
    if cell == "fox" and m.get("train_seconds", 0) <= 600 + 1:
        at10 = m["psnr"]  # the fox trains for 10 minutes: its final numbers are the 10-minute ones
    row = {"cell": cell, "model": model, "scene_space": c.get("scene_space", "box (no --scene-space yet)"),
           "resolution": res, "budget_s": c.get("train", {}).get("time_budget"), "psnr_10min": at10,
           "psnr": m["psnr"], "ssim": m["ssim"], "n_test_views": m["n_test_views"], "steps": m.get("steps"),
           "rays_per_second": m["rays_per_second"], "eval_rays_per_second": m.get("eval_rays_per_second"),
           "train_seconds": m["train_seconds"], "params": m.get("params"), "date": m.get("date"),
           "machine": m.get("machine"), "peak_rss_gib_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
           / 2**20, "load_average_at_start": m.get("load_average_at_start"), "curve": pts}
    if video is not None:
        row |= {"video": f"{video['frames']} x {video['width']}x{video['height']}", "video_path": video["out"],
                "render_seconds": video["render_seconds"], "render_target_met": video["target_met"]}
    return row


def make_llff_scene(args) -> Path:
    """The synthetic LLFF scene in ``OUT/scene``, made once and reused while its settings stay the same."""
    from gridfield.data.scene_maker import make_scene

    root, record = args.out / "scene", args.out / "scene.json"
    want = {"mesh": "torus_knot", "views": args.llff_views, "size": list(args.llff_size), "layout": "llff"}
    if record.is_file() and json.loads(record.read_text()) == want and (root / "poses_bounds.npy").is_file():
        return root
    t0 = time.perf_counter()
    make_scene("torus_knot", root, views=args.llff_views, size=args.llff_size[0], height=args.llff_size[1],
               layout="llff")
    record.write_text(json.dumps(want, indent=2) + "\n")
    print(f"llff: made the scene in {time.perf_counter() - t0:.0f} s ({root})", flush=True)
    return root


def run_cells(args, results: dict) -> None:
    """Run (or reuse) every requested cell, saving the results after each."""
    args.out.mkdir(parents=True, exist_ok=True)
    for cell in args.cells:
        if cell == "fox" and not (args.fox / "transforms.json").is_file():
            print(f"fox: skipped (no capture at {args.fox})", flush=True)
            continue
        for model in args.models:
            name = f"{cell}-{model}"
            run_dir = args.out / name
            if cell == "fox":
                m = train_cell(args, args.fox, model, run_dir, args.fox_downscale, args.fox_seconds)
                video = render_video(args, run_dir, name)
                res = f"{1080 // args.fox_downscale}x{1920 // args.fox_downscale}"
                row = summary(cell, model, m, res, video)
            else:
                scene = make_llff_scene(args)
                held_out = math.ceil(args.llff_views / 8)
                seconds = tuple(s for s in args.llff_curve_seconds if s < args.llff_seconds)
                m = train_cell(args, scene, model, run_dir, 8, args.llff_seconds, curve_views=held_out,
                               curve_seconds=seconds or (args.llff_seconds / 2,))
                row = summary(cell, model, m, f"{args.llff_size[0]}x{args.llff_size[1]}", None,
                              curve_points(run_dir, m))
            results["cells"][name] = row
            save(args.results, results)
            print(markdown_table([{k: ("" if v is None else v) for k, v in row.items()}], COLUMNS[:-1]), flush=True)


# ---------------------------------------------------------------------------------------------- results


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"benchmark": NAME, "cells": {}}


def save(path: Path, results: dict) -> None:
    """Atomic write (an interrupt loses at most the cell in progress)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


def to_markdown(results: dict) -> str:
    """The "## Capture benchmarks" section: what the cells are, then one row per finished cell."""
    rows = []
    for r in results["cells"].values():
        mach = r.get("machine") or {}
        row = {**r, "machine": f"{mach.get('cpu', '?')}, {mach.get('torch_threads', '?')} threads",
               "date": (r.get("date") or "")[:16].replace("T", " ")}
        rows.append({k: ("" if v is None else v) for k, v in row.items()})
    table = markdown_table(rows, COLUMNS) if rows else "(no cell has been run yet)"
    intro = textwrap.fill(
            "`python benchmarks/nerf_captures.py` (issue #14; resumable per cell, `--quick` checks every cell in a "
            "few minutes, `--report-only` rewrites this section from `benchmarks/results/nerf_captures.json`). "
            "Cells: **fox** (`../shared/data/fox`, 50 photos of 1080x1920, downscale 4: 270x480), 10 minutes of "
            "training, PSNR and SSIM on every 8th frame, then a 120-frame orbit video at 540x960 through "
            "`gridfield render`'s code path, timed (target: under 5 minutes); **llff**: a synthetic forward-facing "
            "capture in LLFF's format (`gridfield make-scene --layout llff --views 32 --size 504 --height 378`: the "
            "torus knot before a textured wall and floor, a jittered handheld grid of cameras; `images_8/`, so "
            "trained with `--downscale 8`), 20 minutes of training, PSNR on every held-out view (every 8th: 4 "
            "views) at 10 minutes from the time-to-PSNR curve (`psnr_10min`: a point of the 20-minute run, whose "
            "learning rate has decayed only halfway) and PSNR and SSIM at 20 minutes. `budget_s`: training "
            "seconds (the training clock; curve renders excluded); `rays_per_second`: training rays; "
            "`render_seconds`: the whole video, decoding of the checkpoint and encoding included.", width=110,
            break_long_words=False, break_on_hyphens=False)
    reading = textwrap.fill(
            "Reading the llff row: the synthetic scene is a clean render with exact poses, no exposure changes and "
            "no view-dependent effects beyond the renderer's own, so it is far easier than a real LLFF capture: "
            "its PSNR shows that the forward-facing pipeline (LLFF's layout, NDC, the every-8th hold-out) works, "
            "and is not comparable with the published 20 to 33 dB on the real LLFF scenes (fern 25.17 dB); no "
            "real LLFF capture is in the shared data.", width=110, break_long_words=False, break_on_hyphens=False)
    return f"{SECTION}\n\n{intro}\n\n{table}\n\n{reading}\n"


def write_section(markdown: str) -> None:
    """Replace the "## Capture benchmarks" section of docs/nerf.md (up to the next "## " heading), or append it."""
    text = DOC.read_text()
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + markdown.rstrip() + "\n" + ("" if nxt < 0 else text[nxt:])
    else:
        text = text.rstrip() + "\n\n" + markdown.rstrip() + "\n"
    DOC.write_text(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = load(args.results)
    if not args.report_only:
        results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        results["machine_at_start"] = machine()
        run_cells(args, results)
    md = to_markdown(results)
    print(md)
    if not args.quick:
        write_section(md)
        print(f"wrote the section {SECTION!r} of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
