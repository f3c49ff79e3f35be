"""Fast paths vs their eager references, measured as ratios in the same process (issue #7).

Sections: grid encodings (hash and dense, forward + backward, eikonal double backward), MulFAGrid
forward + backward, NeRF training throughput on lego 400x400 (skipped without the shared data), and,
with ``--compile-cost``, the one-off first-use build time of each C++ extension (fresh cache folder,
in a subprocess).

Usage: ``python benchmarks/speed.py [--threads 2] [--nerf-seconds 20] [--nerf-threads 1 2]
[--only grids mulfa nerf] [--compile-cost] [--no-record]``. Writes ``benchmarks/results/speed.json`` and its section of
``docs/benchmarks.md``; the sections not rerun (``--only``) keep their earlier rows (dated in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import machine, markdown_table, probe_text, write_results  # noqa: E402

EXTENSIONS = {  # name -> module defining the extension's NAME and SOURCES
    "grid_encode": "gridfield.fast.grid_encode",
    "mulfa": "gridfield.fast.mulfa",
    "render": "gridfield.fast.render",
}


def compile_cost() -> list[dict]:
    """Seconds to build each extension from scratch (empty ``GRIDFIELD_CACHE``) and to load it cached."""
    rows = []
    for short, module in EXTENSIONS.items():
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "GRIDFIELD_CACHE": cache}
            code = (f"import {module} as m; from gridfield.fast import load_extension; "
                    "assert load_extension(m.NAME, tuple(m.SOURCES)) is not None")
            times = []
            for _ in range(2):  # first: compile; second: cached load
                t0 = time.perf_counter()
                done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
                times.append(time.perf_counter() - t0)
                if done.returncode:
                    times.append(float("nan"))
                    break
            rows.append({"extension": short, "first_use_s": times[0], "cached_load_s": times[1],
                         "ok": done.returncode == 0})
            print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table over the union of the rows' keys (first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return markdown_table(rows, cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nerf-seconds", type=float, default=20.0)
    ap.add_argument("--nerf-threads", type=int, nargs="*", default=None,
                    help="thread counts for the NeRF section (default: --threads only)")
    ap.add_argument("--only", nargs="*", default=["grids", "mulfa", "nerf"])
    ap.add_argument("--compile-cost", action="store_true")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {}
    if args.compile_cost:
        results["compile"] = compile_cost()
    if "grids" in args.only:
        import _speed_grids

        results["grids"] = _speed_grids.run(args.threads)
    if "mulfa" in args.only:
        import _speed_mulfa

        results["mulfa"] = _speed_mulfa.run(args.threads)
        results["mulfa_vs_hash"] = _speed_mulfa.versus_hash(args.threads)
    if "nerf" in args.only:
        import _speed_nerf

        results["nerf"] = [row for t in (args.nerf_threads or [args.threads])
                           for row in _speed_nerf.run(t, args.nerf_seconds)]
        torch.set_num_threads(args.threads)
    for name, rows in results.items():
        print(f"== {name}\n{table(rows)}", flush=True)
    if args.no_record:
        return
    old_path = Path(__file__).resolve().parent / "results" / "speed.json"
    old = json.loads(old_path.read_text()) if old_path.exists() else {}
    kept = [k for k in ("compile", "grids", "mulfa", "mulfa_vs_hash", "nerf") if k in old and k not in results]
    results = {**{k: old[k] for k in kept}, **results}  # sections not rerun keep their (dated) rows
    if kept:
        print(f"kept from {old_path.name} (not rerun, measured {old.get('machine', {}).get('date')}): {kept}")
    m = machine()
    md = (f"## Fast paths (`benchmarks/speed.py`)\n\n{m['date']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
          f"{args.threads} thread(s) for both torch and the C++ kernels (NeRF: the threads column); "
          "eager and fast measured in the same process "
          f"(ratios), median of repeats after a warm-up. Load average (1 min) at the end: {os.getloadavg()[0]:.1f}; "
          f"{probe_text(m)}.\n")
    titles = {"compile": "First use: building each C++ extension (fresh cache) and loading it cached",
              "grids": "Grid encodings, forward + backward (table gradients), and the eikonal double backward",
              "mulfa": "MulFAGrid forward + backward (features and kernel-network gradients)",
              "mulfa_vs_hash": "MulFAGrid presets vs the hash presets on the same levels (fast paths, forward + "
                               "backward; target ratio <= 2), and NeRF's dense-layout MulFAGrid preset beside the NeRF "
                               "hash grid (not equal parameters)",
              "nerf": "NeRF training throughput, lego 400x400, default model"}
    for name, rows in results.items():
        md += f"\n### {titles.get(name, name)}\n\n{table(rows)}\n"
    write_results("speed", {"machine": m, "settings": vars(args), **results}, md)


if __name__ == "__main__":
    main()
