"""MulFAGrid NeRF preset search on lego: the dense-layout variants behind ``presets.nerf``'s ``mulfagrid``.

Each variant replaces the grid of ``gridfield nerf --model mulfagrid`` (one dense level with a MulFA
kernel) and trains for ``--time-budget`` training seconds in its own process, then renders
``--test-views`` evenly spaced test views. Variants: ``VARIANTS`` below (resolution, features, kernel).

Usage::

    python benchmarks/mulfagrid_nerf_presets.py --time-budget 120 --test-views 4
    python benchmarks/mulfagrid_nerf_presets.py --variants k1 k1-r96 --no-write

Resumable: a variant whose run finished (``OUT/VARIANT/metrics.json`` with the same budget, views and grid)
is reused. Writes ``benchmarks/results/mulfagrid_nerf_presets.json`` and its section of
``docs/benchmarks.md``. Skips (exit 0) without the scene.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SHARED_DATA, lego_present, machine, markdown_table, probe_text, write_results  # noqa: E402

# presets.image.MULFA_HASH_KERNEL as it was when searched, spelled out so that the recorded variants stay what ran
K1 = {"frequencies": 2, "width": 16, "layers": 1}
#: variant -> the MulFAGrid's kwargs (the kernel's defaults: 4 octaves, 3 layers of 16)
VARIANTS = {
    "r64-default-kernel": {"resolutions": [64], "features_per_level": 8},  # the preset until 2026-12-08
    "k1": {"resolutions": [64], "features_per_level": 8, **K1},
    "k1-f16": {"resolutions": [64], "features_per_level": 16, **K1},
    "k1-r96": {"resolutions": [96], "features_per_level": 8, **K1},  # the preset since 2026-12-08
    "k1-r112": {"resolutions": [112], "features_per_level": 8, **K1},
    "k1-r128": {"resolutions": [128], "features_per_level": 8, **K1},
}
COLUMNS = ["variant", "psnr", "ssim", "steps", "rays_per_second", "samples_per_ray", "params", "date"]
# (date: when the variant's run finished; a reused run keeps its own)


def child(variant: str, argv: list[str]) -> None:
    """Run ``gridfield nerf`` (``argv``) with ``variant``'s grid as the mulfagrid preset."""
    from unittest import mock

    import gridfield.presets.nerf as nerf_presets
    from gridfield.cli import entry
    from gridfield.presets.specs import GridSpec

    grids = nerf_presets._grids

    def variant_grids(model, resolution, appearance, side):
        if model != "mulfagrid":
            return grids(model, resolution, appearance, side)
        return GridSpec("mulfagrid", VARIANTS[variant]), None, 2e-2, 1e-2

    with mock.patch.object(nerf_presets, "_grids", variant_grids), mock.patch.object(sys, "argv", argv):
        entry()


def run_variant(args, variant: str) -> dict:
    """Train and evaluate one variant in a child process (or reuse its finished run); its metrics."""
    out = args.out / variant
    path = out / "metrics.json"
    if path.is_file():
        m = json.loads(path.read_text())
        c, grid = m.get("config", {}), m.get("spec", {}).get("density", {}).get("kwargs")
        same = c.get("train", {}).get("time_budget") == args.time_budget and c.get("test_views") == args.test_views
        if same and grid == VARIANTS[variant]:  # the same budget, views and grid
            print(f"{variant}: reusing the finished run in {out}", flush=True)
            return m
    argv = ["gridfield", "nerf", str(args.scene), "--model", "mulfagrid", "--time-budget", str(args.time_budget),
            "--steps", "1000000", "--test-views", str(args.test_views), "--save-renders", "1",
            "--turntable-frames", "0", "--out", str(out), "--no-progress"]
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import {Path(__file__).stem} as b; " \
           f"b.child({variant!r}, {argv!r})"
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    if subprocess.run([sys.executable, "-c", code], env=env).returncode != 0:
        raise SystemExit(f"{variant}: gridfield nerf failed; rerun to try again")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, default=SHARED_DATA / "lego")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--time-budget", type=float, default=120.0)
    ap.add_argument("--test-views", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_mulfagrid_nerf_presets"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if not lego_present(args.scene):
        return 0
    args.out = args.out.resolve()
    load = os.getloadavg()
    rows = []
    for v in args.variants:
        m = run_variant(args, v)
        rows.append({"variant": v, **{c: m.get(c) for c in COLUMNS[1:]}, "grid": VARIANTS[v]})
        print(markdown_table(rows[-1:], COLUMNS), flush=True)
    info = machine()
    md = (f"## MulFAGrid NeRF presets (lego)\n\n{info['date']}, {info['cpu']} ({info['cores']} cores, "
          f"{args.threads} threads; {probe_text(info)} after the runs); load average at start {load[0]:.1f}. "
          f"lego 400x400, {args.time_budget:.0f} s of training per variant, {args.test_views} evenly spaced test "
          "views. Grid of each variant: `VARIANTS` in `benchmarks/mulfagrid_nerf_presets.py` (k1: the image "
          "presets' kernel, 2 octaves, 1 layer of 16; default kernel: 4 octaves, 3 layers of 16). "
          "Script: `benchmarks/mulfagrid_nerf_presets.py`.\n\n" + markdown_table(rows, COLUMNS))
    if not args.no_write:
        write_results("mulfagrid_nerf_presets", {"machine": info, "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "load_average_at_start": load,
            "results": rows}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
