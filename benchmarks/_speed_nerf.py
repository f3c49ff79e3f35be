"""NeRF training throughput on lego (400x400, default dense model): eager references vs fast paths.

Both variants start from the same warmed state (carved occupancy grid, a short eager warm-up at the
starting resolution with occupancy updates, then the coarse-to-fine refit to the final resolution
exactly as :class:`gridfield.tasks.nerf_train.NerfTask` does), in the same process, and run the same
training step (random rays, march, render, loss, backward, fused Adam, an occupancy update every
``occ_every`` steps). Rays per second = ``batch_rays * steps / seconds``. A per-part breakdown
(``torch.profiler`` record_function regions) follows.

Usage::

    python benchmarks/_speed_nerf.py --threads 1 --seconds 20

``run(threads, seconds)`` returns flat rows (eager, fast, their ratio, rough hardware limits; the
per-part breakdown as strings). Skips with a message when ``../shared/data/lego`` is absent.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEGO = ROOT.parent / "shared" / "data" / "lego"
WARM_STEPS = 96  # eager warm-up steps at the starting resolution (occupancy updates at 32, 48, 64, 80)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the C++ kernels read torch's setting; this is for clarity


def prepare(scene: Path = LEGO, warm_steps: int = WARM_STEPS, seed: int = 0) -> dict:
    """Warmed training state: ``field``, ``occ``, ``settings``, ``data``, ``spec``, ``cfg`` (eager warm-up)."""
    import torch

    from gridfield import presets
    from gridfield.data.blender import load_blender
    from gridfield.fields.radiance import refit_dense
    from gridfield.render.occupancy import OccupancyGrid
    from gridfield.render.pipeline import RenderSettings
    from gridfield.tasks.nerf import NerfConfig
    from gridfield.tasks.nerf_train import refit_plan, step_size
    from gridfield.training import TrainConfig, seed_everything

    cfg = NerfConfig(scene=scene, train=TrainConfig(progress=False, seed=seed, backend="reference"))
    seed_everything(seed)
    data = load_blender(scene, "train")
    first = 2 * cfg.aabb_scale / max(8, cfg.resolution // 2) * cfg.step_ratio
    spec = presets.get("nerf", cfg.model, resolution=cfg.resolution, appearance=cfg.appearance,
                       aabb_scale=cfg.aabb_scale, step=first)
    occ = OccupancyGrid(torch.tensor(list(spec.aabb)), cfg.occ_resolution)
    occ.carve(data.c2w, data.K, data.alphas, data.near)
    spec = replace(spec, aabb=occ.occupied_aabb(margin_cells=2).tolist())
    field = spec.build()
    settings = RenderSettings(data.near, data.far, step_size(field, spec, cfg.step_ratio), backend="reference")
    state = {"field": field, "occ": occ, "settings": settings, "data": data, "spec": spec, "cfg": cfg}
    trainer = Trainer(state, backend="reference", seed=seed)
    for _ in range(warm_steps):
        trainer.step()
    # the coarse-to-fine refits, straight to the final resolution (as train_nerf does at 30% progress)
    box = occ.occupied_aabb(margin_cells=3)
    box = torch.cat([torch.maximum(box[:3], field.aabb[:3]), torch.minimum(box[3:], field.aabb[3:])])
    res = refit_plan(cfg.resolution)[-1][1]
    refit_dense(field, box, res)
    state["spec"] = spec = spec.refit(res, field.aabb.tolist())
    state["settings"] = replace(settings, step=step_size(field, spec, cfg.step_ratio))
    state["step"] = trainer.n
    return state


class Trainer:
    """One training step of :class:`gridfield.tasks.nerf_train.NerfTask` on a state from :func:`prepare`,
    with every fast path forced to ``backend`` (the field, the renderer and the grids)."""

    def __init__(self, state: dict, backend: str, seed: int = 1, lr_scale: float = 0.5) -> None:
        import torch

        from gridfield.training import make_optimizer

        self.s, self.backend = state, backend
        self.field, self.occ, self.data, self.cfg = state["field"], state["occ"], state["data"], state["cfg"]
        self.field.backend = backend
        self.settings = replace(state["settings"], backend=backend)
        spec = state["spec"]
        self.opt = make_optimizer(self.field, spec.lr_grid * lr_scale, spec.lr_other * lr_scale, fused=True)
        n, h, w, _ = self.data.images.shape
        self.shape = (n, h, w)
        self.pixels = self.data.images.reshape(-1, 3)
        self.gen = torch.Generator().manual_seed(seed)
        self.n = state.get("step", 0)
        self.samples = 0

    def step(self, profile: bool = False) -> float:
        import torch
        from torch.profiler import record_function

        from gridfield.render.pipeline import render_rays
        from gridfield.render.rays import rays_from_pixels

        cfg, occ, field, s = self.cfg, self.occ, self.field, self.settings
        n, h, w = self.shape
        if self.n >= cfg.occ_start and (self.n - cfg.occ_start) % cfg.occ_every == 0:
            with record_function("occupancy_update"):
                occ.update(field.density, s.step)
        with record_function("rays"):
            idx = torch.randint(n * h * w, (cfg.batch_rays,), generator=self.gen)
            img, pix = idx // (h * w), idx % (h * w)
            o, d = rays_from_pixels(self.data.c2w[img], self.data.K, pix % w, pix // w)
        out = render_rays(field, o, d, occ, field.aabb, s, stratified=True)
        with record_function("loss"):
            loss = (out["rgb"] - self.pixels[idx]).square().mean()
        with record_function("zero_grad"):
            self.opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            loss.backward()
        with record_function("adam"):
            self.opt.step()
        self.n += 1
        self.samples += int(out["n_samples"])
        return float(loss.detach())


def _time(trainer: Trainer, seconds: float, min_steps: int = 8) -> dict:
    t0, steps, rays = time.perf_counter(), 0, 0
    trainer.samples = 0
    while steps < min_steps or time.perf_counter() - t0 < seconds:
        trainer.step()
        steps += 1
        rays += trainer.cfg.batch_rays
    dt = time.perf_counter() - t0
    return {"steps": steps, "seconds": dt, "rays_per_second": rays / dt, "ms_per_step": 1e3 * dt / steps,
            "samples_per_ray": trainer.samples / rays}


PARTS = ("occupancy_update", "rays", "march", "density", "weights", "color", "accumulate", "loss",
         "zero_grad", "backward", "adam")


def breakdown(trainer: Trainer, steps: int = 16) -> dict:
    """Milliseconds per step (wall, averaged over ``steps``) of each named region, and of the top ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        total = time.perf_counter() - t0
    avg = prof.key_averages()
    parts = {e.key: e.cpu_time_total / 1e3 / steps for e in avg if e.key in PARTS}
    ops = sorted((e for e in avg if e.key not in PARTS and not e.key.startswith("ProfilerStep")),
                 key=lambda e: -e.self_cpu_time_total)[:15]
    return {"total_ms_per_step": 1e3 * total / steps, "parts_ms": parts,
            "top_ops_self_ms": {e.key: e.self_cpu_time_total / 1e3 / steps for e in ops}}


def limits(state: dict, fast_row: dict) -> dict:
    """Rough hardware limits of one training step, next to the measured fast step.

    memory: Adam reads param, grad, exp_avg, exp_avg_sq and writes three of them (7 x 4 bytes per
    parameter) and the grid gradients are zeroed (4 bytes per grid parameter), every step, whatever
    the kernels do; divided by the measured copy bandwidth (``dst.copy_(src)``, 64 MiB, same threads).
    compute: the colour MLP's forward + backward FLOPs (6 x multiply-adds x samples; every sample
    counted, an upper bound since samples below the weight threshold skip the MLP).
    """
    import torch

    field = state["field"]
    n_all = sum(p.numel() for p in field.parameters())
    n_grid = sum(p.numel() for p in field.grid_parameters().values())
    src, dst = torch.empty(1 << 24), torch.empty(1 << 24)
    dst.copy_(src)
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    bw = 10 * 2 * src.numel() * 4 / (time.perf_counter() - t0)
    step_bytes = 7 * 4 * n_all + 4 * n_grid
    head = field.color_head
    macs = sum(m.in_features * m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear)) if head else 0
    flops = 6 * macs * fast_row["samples_per_ray"] * state["cfg"].batch_rays
    rays = state["cfg"].batch_rays
    return {"variant": "limits", "params": n_all, "optimizer_bytes_per_step": step_bytes,
            "copy_bandwidth_GBps": bw / 1e9, "optimizer_ms_at_bandwidth": 1e3 * step_bytes / bw,
            "memory_bound_rays_per_second": rays * bw / step_bytes,
            "mlp_gflop_per_step_at_most": flops / 1e9,
            "fast_ms_per_step": fast_row["ms_per_step"]}


def run(threads: int = 1, seconds: float = 20.0, scene: Path = LEGO, profile_steps: int = 16) -> list[dict]:
    """Rows ``{variant, rays_per_second, ms_per_step, ...}`` for eager and fast, plus the ratio row."""
    if not (scene / "transforms_train.json").is_file():
        print(f"skipping: lego scene not found at {scene}")
        return []
    import torch

    _set_threads(threads)
    state = prepare(scene)
    rows = []
    for backend, name in (("reference", "eager"), ("auto", "fast")):
        st = copy.deepcopy({k: v for k, v in state.items() if k != "data"})
        st["data"] = state["data"]
        torch.manual_seed(1)
        tr = Trainer(st, backend)
        for _ in range(3):  # first use: compile/load the extension, allocator warm-up
            tr.step()
        row = {"variant": name, "threads": threads, **_time(tr, seconds)}
        if profile_steps:
            b = breakdown(tr, profile_steps)
            row["parts_ms"] = ", ".join(f"{k} {b['parts_ms'][k]:.1f}" for k in PARTS if k in b["parts_ms"])
            row["top_ops_self_ms"] = ", ".join(f"{k.removeprefix('aten::')} {v:.1f}"
                                               for k, v in list(b["top_ops_self_ms"].items())[:8])
        rows.append(row)
    rows.append({"variant": "fast / eager", "threads": threads,
                 "ratio": rows[1]["rays_per_second"] / rows[0]["rays_per_second"]})
    rows.append(limits(state, rows[1]))
    return rows


def _print(rows: list[dict]) -> None:
    for r in rows:
        if r["variant"] == "limits":
            print(f"      limits: {r['params'] / 1e6:.1f} M params -> {r['optimizer_bytes_per_step'] / 1e6:.0f} MB of "
                  f"Adam + gradient-zeroing traffic per step = {r['optimizer_ms_at_bandwidth']:.0f} ms at the measured "
                  f"{r['copy_bandwidth_GBps']:.1f} GB/s copy bandwidth "
                  f"(at most {r['memory_bound_rays_per_second']:.0f} "
                  f"rays/s); colour MLP <= {r['mlp_gflop_per_step_at_most']:.2f} GFLOP per step; "
                  f"fast step {r['fast_ms_per_step']:.0f} ms")
            continue
        if "ratio" in r:
            print(f"{r['variant']:>12}: {r['ratio']:.2f}x ({r['threads']} thread(s))")
            continue
        print(f"{r['variant']:>12}: {r['rays_per_second']:9.0f} rays/s  {r['ms_per_step']:7.1f} ms/step  "
              f"{r['samples_per_ray']:.1f} samples/ray  ({r['steps']} steps, {r['threads']} thread(s))")
        if "parts_ms" in r:
            print(f"      parts (ms/step, inclusive): {r['parts_ms']}")
            print(f"      top ops (self ms/step): {r['top_ops_self_ms']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per variant")
    ap.add_argument("--profile-steps", type=int, default=16)
    args = ap.parse_args(argv)
    _print(run(args.threads, args.seconds, profile_steps=args.profile_steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
