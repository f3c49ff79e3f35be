"""MulFAGrid speed on CPU: the eager plain-PyTorch reference vs the fused C++ kernel (``gridfield.fast.mulfa``).

Each row times one training-style step in the same process, reference and fast on the same grid and
points: forward + backward of ``(g(x) * cotangent).sum()`` to the features and the kernel parameters
(``x`` does not require grad, as in image fitting). Reference and fast repeats are interleaved; the median
of ``repeats`` after one warm-up is reported, and the first fast call of the process (which loads, or on a
clean machine compiles, the extension) separately.

Configurations (stated in each row): the 2D image preset (``presets.get("image", "mulfagrid")``: the
hash layout's 14 levels, a 1-layer kernel of width 16 on 2 octaves per level); the earlier dense image
preset (``mulfagrid-dense``: one dense level R = 315, F = 3, kernel L = 4, 3 layers of width 16, ~300K
parameters) in both forms; the same kernel
on 2D line factors (``layout="planes"``, R = 300); 3D dense [16, 32, 64] F = 2 (SDF-style levels) and 3D
tri-plane product [64, 128] F = 4. 16384 points per step (the image preset's batch).

Hardware limit: the arithmetic of one step is dominated by the kernel network's ``W x W`` products
(``2 (M - 1) W^2`` FLOPs per activated vertex forward, twice that backward); the row gives that FLOP
count per point, the GFLOP/s it implies, and the same machine's float32 matmul GFLOP/s (a 1024^3
``torch.mm``) as the rough peak.

Usage::

    python benchmarks/_speed_mulfa.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

N_POINTS = 16384


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def matmul_gflops(n: int = 1024) -> float:
    """float32 GFLOP/s of an ``n x n x n`` ``torch.mm`` (best of 5), the rough compute peak."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(5))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def kernel_flops_per_point(grid) -> int:
    """Matrix-product FLOPs of one forward + backward per point (``3x`` the forward products).

    Per term: the first layer ``2 W D0`` once per point, ``2 (M - 1) W^2`` per activated vertex, the
    output layer ``2 W`` per vertex; the backward does two products of the same size for each.
    """
    total = 0
    for lat, kern in zip(grid.lattices, grid.kernels):
        axes = lat.axes
        width, layers = kern.filter_phase.shape[1], kern.filter_phase.shape[0]
        k = 2 ** len(axes)
        d0 = 2 * kern.frequencies * len(axes)
        total += 2 * width * d0 + k * (2 * (layers - 1) * width * width + 2 * width)
    return 3 * total


def configs() -> list[tuple[str, dict]]:
    """``(label, MulFAGrid kwargs)`` of the benchmarked configurations."""
    from gridfield import presets

    spec = presets.get("image", "mulfagrid-dense", out_dim=3).grid_kwargs
    r, f = spec["resolutions"], spec["features_per_level"]
    hashed = dict(presets.get("image", "mulfagrid", out_dim=3).grid_kwargs)
    return [
        ("2D image preset hash layout, 14 levels, 1 layer x 16, stable", {"dim": 2, **hashed}),
        (f"2D image preset dense R={r} F={f} stable", {"dim": 2, "resolutions": r, "features_per_level": f}),
        (f"2D image preset dense R={r} F={f} paper",
         {"dim": 2, "resolutions": r, "features_per_level": f, "form": "paper"}),
        ("2D lines (planes) R=300 F=3 stable",
         {"dim": 2, "resolutions": [300], "features_per_level": 3, "layout": "planes"}),
        ("3D dense [16,32,64] F=2 stable", {"dim": 3, "resolutions": [16, 32, 64], "features_per_level": 2}),
        ("3D tri-plane product [64,128] F=4 stable",
         {"dim": 3, "resolutions": [64, 128], "features_per_level": 4, "layout": "planes", "aggregate": "product"}),
    ]


def run(threads: int = 1, repeats: int = 7, n: int = N_POINTS) -> list[dict]:
    """Time reference vs fast forward + backward per configuration; one dict per row."""
    import torch

    from gridfield.fast import FastPathUnavailable
    from gridfield.grids import MulFAGrid

    _set_threads(threads)
    peak = matmul_gflops()
    rows = []
    for label, kw in configs():
        torch.manual_seed(0)
        kw = dict(kw)
        dim = kw.pop("dim")
        grid = MulFAGrid(dim, **kw)
        x = torch.rand(n, dim) * 2 - 1
        ct = torch.randn(n, grid.out_dim)

        def step(backend: str, grid=grid, x=x, ct=ct) -> None:
            grid.backend = backend
            grid.zero_grad(set_to_none=True)
            (grid(x) * ct).sum().backward()

        try:
            first = _timed(lambda: step("fast"))
        except FastPathUnavailable as err:
            rows.append({"config": label, "threads": threads, "error": str(err)})
            continue
        step("reference")
        ref, fast = [], []
        for _ in range(repeats):
            ref.append(_timed(lambda: step("reference")))
            fast.append(_timed(lambda: step("fast")))
        t_ref, t_fast = statistics.median(ref), statistics.median(fast)
        flops = kernel_flops_per_point(grid)
        rows.append({
            "config": label, "threads": threads, "points": n,
            "reference_ms": round(t_ref * 1e3, 2), "fast_ms": round(t_fast * 1e3, 2),
            "speedup": round(t_ref / t_fast, 2), "fast_first_call_ms": round(first * 1e3, 1),
            "fast_Mpoints_per_s": round(n / t_fast / 1e6, 3),
            "kernel_flops_per_point": flops, "fast_GFLOPs": round(flops * n / t_fast / 1e9, 2),
            "matmul_peak_GFLOPs": round(peak, 1), "fraction_of_peak": round(flops * n / t_fast / 1e9 / peak, 3),
        })
    return rows


def hash_pairs() -> list[tuple[str, int, dict, dict, int]]:
    """``(label, dim, HashGrid kwargs, MulFAGrid kwargs, points)``: each task's hash preset beside the MulFAGrid
    preset on the same levels (equal parameters up to the kernels, at most 1%), and NeRF's ``mulfagrid`` preset
    (one dense level) beside NeRF's hash preset (not equal parameters): the pair ``gridfield nerf`` trains."""
    from gridfield import presets

    out = []
    for task, dim, n in (("image", 2, 1 << 16), ("sdf", 3, 1 << 14)):
        h = dict(presets.get(task, "hash").grid_kwargs)
        m = dict(presets.get(task, "mulfagrid").grid_kwargs)
        out.append((f"{task} presets (dim {dim})", dim, h, m, n))
    nerf_m = dict(presets.get("nerf", "mulfagrid-hash").density.kwargs)
    nerf_h = dict(presets.get("nerf", "hash").density.kwargs)
    out.append(("nerf presets (density grid, dim 3)", 3, nerf_h, nerf_m, 1 << 16))
    nerf_dense = dict(presets.get("nerf", "mulfagrid").density.kwargs)
    r, f = nerf_dense["resolutions"][0], nerf_dense["features_per_level"]
    out.append((f"nerf mulfagrid preset (dense {r}^3 F={f}, dim 3) vs nerf hash", 3, nerf_h, nerf_dense, 1 << 16))
    return out


def versus_hash(threads: int = 1, repeats: int = 5) -> list[dict]:
    """Fast forward + backward of each pair of :func:`hash_pairs` (MulFAGrid, hash), interleaved in one process;
    ``ratio`` = MulFAGrid / hash time (the issue's target, at equal parameters: at most 2)."""
    import torch

    from gridfield.grids import HashGrid, MulFAGrid
    from gridfield.models import count_parameters

    _set_threads(threads)
    rows = []
    for label, dim, hk, mk, n in hash_pairs():
        torch.manual_seed(0)
        grids = {"hash": HashGrid(dim, **hk), "mulfagrid": MulFAGrid(dim, **mk)}
        x = torch.rand(n, dim) * 2 - 1
        cts = {k: torch.randn(n, g.out_dim) for k, g in grids.items()}

        def step(name: str, grids=grids, x=x, cts=cts) -> None:
            g = grids[name]
            g.zero_grad(set_to_none=True)
            (g(x) * cts[name]).sum().backward()

        for name in grids:
            step(name)
        times: dict[str, list[float]] = {k: [] for k in grids}
        for _ in range(repeats):
            for name in grids:
                times[name].append(_timed(lambda name=name: step(name)))
        t = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"config": label, "threads": threads, "points": n,
                     "params_hash": count_parameters(grids["hash"]),
                     "params_mulfagrid": count_parameters(grids["mulfagrid"]),
                     "hash_ms": round(t["hash"] * 1e3, 1), "mulfagrid_ms": round(t["mulfagrid"] * 1e3, 1),
                     "ratio": round(t["mulfagrid"] / t["hash"], 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    for row in run(args.threads, args.repeats) + versus_hash(args.threads):
        print(row, flush=True)


if __name__ == "__main__":
    main()
