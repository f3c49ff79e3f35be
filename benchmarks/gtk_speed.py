"""GTK speed: the structured sparse GTK vs torch.func's Jacobian-contraction NTK, and the bound and top
eigenvalues of a 512x512 image's GTK (262,144 pixels, hash grid) with the matrix-free operator.

Usage: ``python benchmarks/gtk_speed.py [--sizes 1024 4096] [--image-size 512] [--no-record]``.
Writes ``benchmarks/results/gtk_speed.json`` and its section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_results  # noqa: E402
from gridfield.data.images import load_image, pixel_coords  # noqa: E402
from gridfield.gtk import bound, eigenspectrum, gtk  # noqa: E402
from gridfield.models import build_field  # noqa: E402

MODELS = {  # small enough that torch.func's dense Jacobian ([n, P] float32) fits at n = 4096
    "dense": dict(model="dense", resolutions=[32, 64, 128], features_per_level=2),
    "hash": dict(model="hash", n_levels=8, features_per_level=2, log2_hashmap_size=12, base_resolution=16,
                 per_level_scale=1.5),
}
SCALE_MODEL = dict(model="hash", n_levels=16, features_per_level=2, log2_hashmap_size=19, base_resolution=16,
                   finest_resolution=512)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def torch_func_ntk(field, x: torch.Tensor) -> tuple[np.ndarray, str]:
    """The torch.func tutorial's Jacobian-contraction NTK wrt the grid features, traced over outputs.

    Per-sample ``vmap(jacrev)`` when the model's forward can be vmapped; otherwise (data-dependent
    checks in the forward, e.g. the hash grid's finiteness check) ``jacrev`` of the batch function
    in chunks of 256 cotangents. Returns the kernel and the mode used.
    """
    params = {k: v.detach() for k, v in field.grid_parameters().items()}

    def single(p, xi):
        return functional_call(field, p, (xi.unsqueeze(0),)).squeeze(0)

    try:
        jac, mode = vmap(jacrev(single), (None, 0))(params, x), "vmap(jacrev)"
    except RuntimeError:
        jac = jacrev(lambda p: functional_call(field, p, (x,)), chunk_size=256)(params)
        mode = "jacrev(batch, chunk 256)"
    j = torch.cat([v.flatten(2) for v in jac.values()], 2)  # [n, m, P]
    return (torch.einsum("nmp,kmp->nk", j, j) / j.shape[1]).detach().double().numpy(), mode


def compare(sizes: list[int]) -> list[dict]:
    """Both implementations on the same model and points (after a small warm-up call of each)."""
    rows = []
    for spec in MODELS.values():
        warm = build_field(in_dim=2, out_dim=1, decoder="linear", **spec)
        xw = torch.rand(8, 2) * 2 - 1
        gtk(warm, xw, implementation="structured")
        torch_func_ntk(warm, xw)
    for name, spec in MODELS.items():
        for n in sizes:
            torch.manual_seed(0)
            field = build_field(in_dim=2, out_dim=1, decoder="linear", **spec)
            x = torch.rand(n, 2) * 2 - 1
            t_struct, t_dense = float("inf"), float("inf")
            for _ in range(3):  # best of 3 (it takes milliseconds; torch.func's tens of seconds run once)
                t0 = time.perf_counter()
                kernel = gtk(field, x, implementation="structured")  # sparse [n, n]: the exact kernel
                t_struct = min(t_struct, time.perf_counter() - t0)
                g = kernel.dense()  # only to compare entries with torch.func's dense result
                t_dense = min(t_dense, time.perf_counter() - t0)
            gc.collect()
            t0 = time.perf_counter()
            ref, mode = torch_func_ntk(field, x)
            t_func = time.perf_counter() - t0
            err = float(np.abs(g - ref).max() / np.abs(ref).max())
            rows.append({"model": name, "n": n, "params": sum(p.numel() for p in field.grid.parameters()),
                         "structured_s": t_struct, "structured_dense_s": t_dense, "torch_func_s": t_func,
                         "speedup": t_func / t_struct, "speedup_incl_dense": t_func / t_dense,
                         "max_rel_diff": err, "torch_func_mode": mode})
            print(rows[-1], flush=True)
            del ref, g
            gc.collect()
    return rows


def copy_bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """Best-of ``repeats`` bandwidth of a torch tensor copy (bytes read + written per second, GB/s)."""
    src = torch.ones(mb * 2**20 // 8, dtype=torch.float64)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 8 / best / 1e9


def matmul_gflops(side: int, dtype=torch.float32, repeats: int = 10) -> float:
    """Best-of ``repeats`` rate of a ``side x side`` matmul (GFLOP/s)."""
    a = torch.rand(side, side, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * side**3 / best / 1e9


def timed(fn, repeats: int = 20) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def iteration_budget(op, precond, n: int) -> dict:
    """Where one PCG iteration's time goes, against the measured copy bandwidth and matmul rate."""
    from gridfield.gtk._matrix import unwrap

    mat = unwrap(op)
    v = np.random.default_rng(0).standard_normal((n, 1))
    gram_s = timed(lambda: mat.matmat(v))
    precond_s = timed(lambda: precond.matmat(v))
    bw = copy_bandwidth_gbs()
    side = precond.d.shape
    flops = 4 * 2 * side[0] * side[1] * (side[0] + side[1]) / 2  # four [H,H]x[H,W] / [H,W]x[W,W] matmuls
    rate = matmul_gflops(side[0], precond.apply_dtype)
    nnz, rows = mat.jac.nnz, mat.jac.shape[1]
    threads = mat.gram.threads if mat.gram is not None else 1
    # two passes over cols (int32) + vals (float64); workspace zeroed, scattered into (read + write), reduced
    gram_bytes = 2 * nnz * 12 + threads * rows * 8 * 4 + n * 8 * 2
    cg_bytes = 12 * n * 8  # the CG loop's vector updates and reductions, about a dozen passes over [n]
    return {"gram_ms": 1e3 * gram_s, "gram_bytes": gram_bytes, "gram_gbs": gram_bytes / gram_s / 1e9,
            "gram_backend": "C++ ELL" if mat.gram is not None else "SciPy CSR",
            "gram_at_bandwidth_ms": 1e3 * gram_bytes / (bw * 1e9),
            "precond_ms": 1e3 * precond_s, "precond_gflop": flops / 1e9, "precond_gflops": flops / precond_s / 1e9,
            "matmul_gflops": rate, "precond_at_matmul_rate_ms": 1e3 * flops / (rate * 1e9),
            "precond_dtype": str(precond.apply_dtype).replace("torch.", ""),
            "cg_vector_bytes": cg_bytes, "copy_bandwidth_gbs": bw, "threads": torch.get_num_threads()}


def at_scale(image: str, size: int, maxiter: int, crop: int, lobpcg_iters: int, rounds: int) -> dict:
    """Bound (preconditioned CG) and top eigenvalues (Lanczos) of the GTK of all ``size**2`` pixels, a
    time budget of one PCG iteration, lambda_min bracketed (shifted PCG rounds below, LOBPCG above), and
    the bound and the bracket checked on a crop against dense Cholesky / eigh."""
    from gridfield.gtk import lambda_min_bracket

    img = load_image(image, max_size=size)
    h, w, c = img.shape
    torch.manual_seed(0)
    field = build_field(in_dim=2, out_dim=c, decoder="linear", **SCALE_MODEL)
    x, y = pixel_coords(h, w), img.reshape(-1, c).double().numpy()
    out = {"image": image, "pixels": h * w, "channels": c, "model": SCALE_MODEL,
           "params": sum(p.numel() for p in field.grid.parameters())}
    t0 = time.perf_counter()
    op = gtk(field, x, implementation="operator")  # includes building the lattice preconditioner
    out["operator_s"] = time.perf_counter() - t0
    out["jacobian_nnz"] = op.info["nnz_jacobian"]
    out["preconditioner"] = op.info["preconditioner"]
    out["dense_gtk_gb"] = 8 * (h * w) ** 2 / 1e9
    t0 = time.perf_counter()
    b = bound(op, y, method="cg", tol=1e-6, maxiter=maxiter)
    out["bound_s"] = time.perf_counter() - t0
    out["bound"] = {k: getattr(b, k) for k in ("value", "normalized", "lambda_min", "lambda_max", "singular", "ridge",
                                               "floored", "iterations", "relative_residual", "method", "note")}
    out["total_s"] = out["operator_s"] + out["bound_s"]
    out["peak_rss_gb"] = peak_rss_gb()  # the at-scale part runs first: this is the bound's own peak
    out["iteration"] = iteration_budget(op, op.preconditioner, h * w)
    t0 = time.perf_counter()
    plain = bound(op, y, method="cg", tol=1e-6, maxiter=b.iterations, preconditioner=None)
    out["unpreconditioned_same_iterations"] = {"value": plain.value, "relative_residual": plain.relative_residual,
                                               "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    spec = eigenspectrum(op, k=4, smallest=False, tol=1e-3)
    out["eigsh_s"] = time.perf_counter() - t0
    out["top_eigenvalues"] = spec.eigenvalues.tolist()
    t0 = time.perf_counter()
    br = lambda_min_bracket(op, rounds=rounds, rtol=1e-3, lobpcg_maxiter=lobpcg_iters)
    out["bracket"] = {"lower": br.lower, "upper": br.upper, "ratio": br.ratio, "upper_residual": br.upper_residual,
                      "rounds": br.rounds, "seconds": time.perf_counter() - t0}
    # accuracy of the bound and of the bracket: a crop small enough for exact eigh
    step = 2 / (size - 1)
    cx = pixel_coords(crop, crop).double() * (crop - 1) * step / 2 + (-1 + (crop - 1) * step / 2)
    cy = img[:crop, :crop].reshape(-1, c).double().numpy()
    g_crop = gtk(field, cx, implementation="operator")
    exact = bound(g_crop.dense(), cy, method="cholesky")
    est = bound(g_crop, cy, method="cg", tol=1e-6, maxiter=maxiter)
    cbr = lambda_min_bracket(g_crop, rounds=rounds, rtol=1e-3, lobpcg_maxiter=lobpcg_iters)
    out["crop_check"] = {"crop": f"{crop}x{crop}", "exact_eigh": exact.lambda_min, "pcg_lower": est.lambda_min,
                         "bracket_lower": cbr.lower, "bracket_upper": cbr.upper, "bracket_rounds": len(cbr.rounds),
                         "bound_exact": exact.value, "bound_pcg": est.value, "pcg_iterations": est.iterations}
    print(out, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096])
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--image", default="camera", help="image of the at-scale run (camera: 512x512 gray)")
    ap.add_argument("--maxiter", type=int, default=1000, help="CG iteration cap at scale")
    ap.add_argument("--lobpcg-iters", type=int, default=0,
                    help="an extra LOBPCG run for the upper end of lambda_min (0: only the bracket's own)")
    ap.add_argument("--rounds", type=int, default=8, help="shifted-PCG rounds (lower end of lambda_min)")
    ap.add_argument("--scale-only", action="store_true",
                    help="rerun only the at-scale part; keep the comparison rows of the recorded JSON")
    ap.add_argument("--crop", type=int, default=48, help="crop side for the exact checks")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    recorded = Path(__file__).resolve().parent / "results" / "gtk_speed.json"
    scale = at_scale(args.image, args.image_size, args.maxiter, args.crop, args.lobpcg_iters, args.rounds)
    if args.scale_only and recorded.exists():
        rows = json.loads(recorded.read_text())["compare"]
    else:
        rows = compare(args.sizes)
    payload = {"machine": machine(), "settings": vars(args), "compare": rows, "at_scale": scale}
    if not args.no_record:
        write_results("gtk_speed", payload, report(payload, os.getloadavg()[0]))


def report(payload: dict, load: float) -> str:
    """The markdown section of ``docs/benchmarks.md`` from a result payload."""
    mach, rows, scale, args = payload["machine"], payload["compare"], payload["at_scale"], payload["settings"]
    b, chk, br, it = scale["bound"], scale["crop_check"], scale["bracket"], scale["iteration"]
    unp = scale["unpreconditioned_same_iterations"]
    per_it = 1e3 * scale["bound_s"] / max(b["iterations"], 1)
    return (
        f"## GTK speed (`benchmarks/gtk_speed.py`)\n\n{mach['date']}, {mach['cpu']}, "
        f"{mach['cores']} cores, torch {mach['torch']}, 2 torch threads.\n\n"
        "Structured sparse GTK (float64) vs the torch.func Jacobian-contraction NTK (float32, "
        "`vmap(jacrev)` + einsum; the hash grid's forward does not vmap (its input check), so there `jacrev` of "
        "the batch function in chunks of 256), wrt the grid features, linear decoder, 1 output, random points; "
        "seconds; structured: best of 3 after a warm-up, torch.func: one run after a warm-up; max_rel_diff is "
        "float32 rounding. `structured_s` is the exact kernel as a sparse matrix (what the toolkit returns); "
        "`structured_dense_s` adds converting it to a dense array (needed only to compare entries), and "
        "`speedup_incl_dense` uses that time:\n\n"
        + markdown_table([{**r, "max_rel_diff": f"{r['max_rel_diff']:.1e}"} for r in rows],
                         ["model", "n", "params", "structured_s", "structured_dense_s", "torch_func_s", "speedup",
                          "speedup_incl_dense", "max_rel_diff", "torch_func_mode"])
        + ("\n\n(Comparison rows from the last full run; the at-scale part below was rerun with --scale-only.)"
           if args["scale_only"] else "")
        + f"\n\nAt scale: {scale['image']} ({scale['channels']} channel(s)), {scale['pixels']} pixels, "
        + "hash grid (16 levels, "
        f"T=2^19, F=2, finest 512, {scale['params']} grid parameters), linear decoder; a dense GTK would need "
        f"{scale['dense_gtk_gb']:.0f} GB.\n\n"
        + markdown_table([{"step": "operator + lattice preconditioner", "seconds": scale["operator_s"],
                           "result": f"Jacobian nnz {scale['jacobian_nnz']}"},
                          {"step": "bound, preconditioned CG", "seconds": scale["bound_s"],
                           "result": f"B = {b['value']:.6g} (trace-normalized {b['normalized']:.6g}), "
                                     f"{b['iterations']} iterations ({per_it:.1f} ms each, incl. one Lanczos "
                                     f"for lambda_max), relative residual {b['relative_residual']:.2g}"},
                          {"step": "**the bound in total** (target: under 10 s, under 2 GiB)",
                           "seconds": scale["total_s"],
                           "result": f"peak RSS {scale['peak_rss_gb']:.2f} GiB (whole process; the at-scale "
                                     "part runs first)"},
                          {"step": "4 largest eigenvalues (Lanczos, tol 1e-3)", "seconds": scale["eigsh_s"],
                           "result": ", ".join(f"{v:.4g}" for v in scale["top_eigenvalues"])},
                          {"step": f"lambda_min bracket ({len(br['rounds'])} shifted-PCG rounds)",
                           "seconds": br["seconds"],
                           "result": f"[{br['lower']:.4g}, {br['upper']:.4g}], upper / lower = {br['ratio']:.4f}"},
                          {"step": "same CG iterations without the preconditioner", "seconds": unp["seconds"],
                           "result": f"B >= {unp['value']:.4g}, relative residual {unp['relative_residual']:.2g}"}],
                         ["step", "seconds", "result"])
        + "\n\n**One PCG iteration against the hardware** (measured in the same run: copy bandwidth "
        f"{it['copy_bandwidth_gbs']:.1f} GB/s read + write, {it['threads']} threads; {it['precond_dtype']} "
        f"{int(round(scale['pixels'] ** 0.5))}-square matmul {it['matmul_gflops']:.1f} GFLOP/s):\n\n"
        + markdown_table([
            {"part": f"G v ({it['gram_backend']}: scatter J^T v, gather J u)", "ms": it["gram_ms"],
             "work": f"{it['gram_bytes'] / 1e6:.0f} MB moved (12 B per non-zero and pass, twice, + workspace)",
             "at the limit (ms)": it["gram_at_bandwidth_ms"], "achieved": f"{it['gram_gbs']:.1f} GB/s"},
            {"part": f"M^-1 r ({it['precond_dtype']}, four matmuls)", "ms": it["precond_ms"],
             "work": f"{it['precond_gflop']:.2f} GFLOP", "at the limit (ms)": it["precond_at_matmul_rate_ms"],
             "achieved": f"{it['precond_gflops']:.1f} GFLOP/s"},
            {"part": "the rest: CG vector updates (about a dozen passes over [n]), the Lanczos for lambda_max "
                     "spread over the iterations, Python", "ms": per_it - it["gram_ms"] - it["precond_ms"],
             "work": f"~{it['cg_vector_bytes'] / 1e6:.0f} MB for the vector updates", "at the limit (ms)":
                 1e3 * it["cg_vector_bytes"] / (it["copy_bandwidth_gbs"] * 1e9), "achieved": ""}],
            ["part", "ms", "work", "at the limit (ms)", "achieved"])
        + "\n\nThe preconditioner (`gridfield/gtk/precond.py`): on a pixel lattice each level's Jacobian is a "
        "Kronecker product of two 1D interpolation matrices, so G is (up to the hash grid's border aliasing) a sum "
        "of 16 Kronecker products of 1D kernels; M is its exact diagonal in the separable eigenbasis of the summed "
        "1D kernels (four 512x512 matmuls per application, float32 from 65,536 points on: CG's residual is "
        "updated with the exact float64 G, so the rounding only steers the iteration). Without it CG stalls (the "
        "kernel's condition number is ~1e8).\n\n"
        "lambda_min: `bound` reports PCG's free lower estimate theta_min(M^-1 G) lambda_min(M) = "
        f"{b['lambda_min']:.4g}. "
        "`lambda_min_bracket` (`gridfield/gtk/eigbracket.py`) tightens it with PCG rounds on G - sigma I and the "
        "shifted preconditioner: the lower end is lambda_min >= sigma + mu(sigma) (lambda_min(M) - sigma) "
        "(an estimate: mu is PCG's smallest Ritz value), the upper end is the Rayleigh quotient of each solve's "
        "solution (shifted inverse iteration; exact upper bound), and sigma goes halfway into the bracket each "
        "round, where negative curvature p^T (G - sigma I) p <= 0 proves lambda_min < sigma. Rounds (sigma, "
        "lower estimate or negative curvature, PCG iterations): "
        + "; ".join(f"({r[0]:.4g}, {'negative' if r[3] else format(r[1], '.4g')}, {r[2]})" for r in br["rounds"])
        + ".\n\n"
        f"Checked on a {chk['crop']} crop of the same model against exact eigh: free PCG estimate "
        f"{chk['pcg_lower']:.4g}, bracket [{chk['bracket_lower']:.6g}, {chk['bracket_upper']:.6g}] "
        f"({chk['bracket_rounds']} rounds), exact {chk['exact_eigh']:.6g}; bound {chk['bound_pcg']:.6g} (PCG, "
        f"{chk['pcg_iterations']} iterations) vs {chk['bound_exact']:.6g} (Cholesky).\n"
        f"Load average (1 min) when this run finished: {load:.1f} on {os.cpu_count()} cores.\n"
    )


if __name__ == "__main__":
    main()
