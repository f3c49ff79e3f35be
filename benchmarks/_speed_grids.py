"""Grid encoding speed on CPU: eager PyTorch vs the fused C++ kernel (``gridfield.fast.grid_encode``).

Each row times one training-style step in the same process, eager and fused on the same grid and points:
forward + backward to the table (``x`` does not require grad), or, for the ``eikonal`` rows, the SDF
eikonal pattern (``grad_x`` with ``create_graph=True``, then backward of ``mean((|g| - 1)^2)`` plus the
features' sum to the table). Median of ``repeats`` after one warm-up. A rough hardware limit follows each
row: the bytes a point must move (table rows gathered in the forward, read + written by the scatter in
the backward, ``grad_out`` and the output) over the machine's copy bandwidth (measured here with a 512 MB
``torch`` copy). Random gathers move whole 64-byte cache lines, so the real floor is higher for hashed
levels that miss the caches.

Configurations (stated in each row): hash 16 levels, F = 2, T = 2**19, base 16, 2**18 points; 2D with
``finest_resolution = 2048`` (b = 1.38), 3D with ``per_level_scale = 2`` (tcnn default, finest 16 * 2**15)
and 3D with ``finest_resolution = 2048`` (Instant-NGP NeRF); dense 3D 128**3 F = 4 (NeRF-style) and dense
2D multi-resolution [64, 128, 256, 512] F = 2.

Usage::

    python benchmarks/_speed_grids.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the kernel uses torch's pool; this is for clarity


def copy_bandwidth(mbytes: int = 512) -> float:
    """Bytes per second of a large tensor copy (read + write counted)."""
    import torch

    a = torch.empty(mbytes * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    b = torch.empty_like(a)
    times = []
    for _ in range(4):
        t = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t)
    return 2 * a.numel() * 4 / min(times)


def _bytes_per_point(n_levels: int, dim: int, f: int, eikonal: bool = False) -> int:
    """Useful bytes per point, float32: gather ``L 2**d F`` in the forward, read + write them in the
    scatter, read ``grad_out`` and write the output; the eikonal step reads the rows twice more
    (backward wrt x, double backward) and scatters once more."""
    k = 2**dim
    rows = n_levels * k * f * 4
    io = 2 * n_levels * f * 4
    return (3 * rows + io) if not eikonal else (7 * rows + 3 * io)


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _step_fn(grid, x, eikonal: bool):
    import torch

    def train_step():
        grid.features.grad = None
        out = grid(x)
        out.backward(torch.ones_like(out) / out.numel())

    def eikonal_step():
        grid.features.grad = None
        xg = x.detach().requires_grad_(True)
        out = grid(xg)
        (g,) = torch.autograd.grad(out.sum(), xg, create_graph=True)
        loss = (g.norm(dim=-1) - 1).pow(2).mean() + out.mean()
        loss.backward()

    return eikonal_step if eikonal else train_step


def configs():
    """(name, constructor, dim, n_levels, F, points) of the rows."""
    from gridfield.grids import DenseGrid, HashGrid

    n = 2**18
    return [
        ("hash2d L16 F2 T19 base16 finest2048", lambda: HashGrid(2, 16, 2, 19, 16, finest_resolution=2048),
         2, 16, 2, n, False),
        ("hash3d L16 F2 T19 base16 b2", lambda: HashGrid(3, 16, 2, 19, 16, per_level_scale=2.0), 3, 16, 2, n, False),
        ("hash3d L16 F2 T19 base16 finest2048", lambda: HashGrid(3, 16, 2, 19, 16, finest_resolution=2048),
         3, 16, 2, n, False),
        ("dense3d 128^3 F4", lambda: DenseGrid(3, 128, 4), 3, 1, 4, n, False),
        ("dense2d [64,128,256,512] F2", lambda: DenseGrid(2, [64, 128, 256, 512], 2), 2, 4, 2, n, False),
        ("eikonal hash3d L16 F2 T19 base16 finest2048",
         lambda: HashGrid(3, 16, 2, 19, 16, finest_resolution=2048), 3, 16, 2, n, True),
        ("eikonal dense3d 128^3 F4", lambda: DenseGrid(3, 128, 4), 3, 1, 4, n, True),
    ]


def run(threads: int, repeats: int = 3, names: list[str] | None = None, strategies: bool = False) -> list[dict]:
    """Rows ``{name, threads, eager_s, fast_s, speedup, bytes_per_point, limit_s, ...}``, float32.

    strategies: also time the fused backward with each table-grad scatter strategy (levels per thread,
    atomic adds, per-thread table copies) on the non-eikonal rows.
    """
    import torch

    from gridfield.fast import grid_encode as fe

    _set_threads(threads)
    bw = copy_bandwidth()
    rows = []
    for name, make, dim, n_levels, f, n, eik in configs():
        if names and not any(s in name for s in names):
            continue
        torch.manual_seed(0)
        grid = make()
        x = torch.rand(n, dim) * 2 - 1
        grid.backend = "reference"
        eager = _median_time(_step_fn(grid, x, eik), repeats)
        grid.backend = "fast"
        fast = _median_time(_step_fn(grid, x, eik), repeats)
        bpp = _bytes_per_point(n_levels, dim, f, eik)
        row = {"name": name, "threads": threads, "points": n, "eager_s": eager, "fast_s": fast,
               "speedup": eager / fast, "bytes_per_point": bpp, "copy_GBps": bw / 1e9,
               "limit_s": bpp * n / bw, "fast_Mpts_per_s": n / fast / 1e6}
        if strategies and not eik:
            spec = grid.encode_spec()
            mod = fe.encoder_for("fast", grid.features, x)
            for s in ("levels", "atomic", "per_thread"):
                grid._spec = spec.with_strategy(s)
                row[f"fast_{s}_s"] = _median_time(_step_fn(grid, x, False), repeats)
            grid._spec = spec
            with torch.no_grad():
                row["fast_forward_s"] = _median_time(
                    lambda g=grid, m=mod, p=x, s=spec: fe.grid_encode(m, g.features, p, s),
                                                     repeats)
        rows.append(row)
    return rows


def _print(rows: list[dict]) -> None:
    for r in rows:
        extra = "".join(f" {k[5:-2]}={r[k]:.3f}s" for k in r if k.startswith("fast_") and k.endswith("_s")
                        and k not in ("fast_s", "fast_Mpts_per_s"))
        print(f"{r['name']:<46} threads={r['threads']} eager={r['eager_s']:.3f}s fast={r['fast_s']:.4f}s "
              f"speedup={r['speedup']:.1f}x  {r['fast_Mpts_per_s']:.2f} Mpts/s  limit~{r['limit_s']:.4f}s "
              f"({r['bytes_per_point']} B/pt at {r['copy_GBps']:.1f} GB/s){extra}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="substrings of row names to run")
    ap.add_argument("--strategies", action="store_true", help="also time each scatter strategy")
    args = ap.parse_args()
    _print(run(args.threads, args.repeats, args.only, args.strategies))
