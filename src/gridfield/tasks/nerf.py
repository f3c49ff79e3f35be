"""Novel view synthesis: a grid radiance field trained on a Blender-format scene, evaluated by the
standard protocol (all test views, PSNR and SSIM averaged over views), with renders, depth maps, a
turntable GIF and a reloadable checkpoint.

The loop is small and explicit: sample random training rays, march them through the occupancy grid
(updated from the density every ``occ_every`` steps), render packed samples, Adam on the squared
error. Dense grids train coarse to fine (:func:`gridfield.fields.radiance.refit_dense`: higher
resolution, box shrunk to the occupied cells). Progress ``p`` is ``step / steps`` or, with a time
budget, ``elapsed / budget`` when larger; learning rates decay as ``0.1^p``.

CLI: ``gridfield nerf SCENE --model dense --steps N --out DIR`` (:class:`NerfConfig`, :func:`run`)
and ``gridfield make-scene MESH --views N --size S --out DIR`` (:class:`MakeSceneConfig`,
:func:`run_make_scene`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from gridfield import presets
from gridfield.data.blender import BlenderSplit, load_blender
from gridfield.errors import InputError
from gridfield.fields.radiance import RadianceField, dense_resolution, refit_dense, total_variation
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.pipeline import RenderSettings, render_camera, render_rays
from gridfield.render.rays import Intrinsics, rays_from_pixels

REFITS = (0.1, 0.2, 0.3)  # progress at which dense grids double their voxel count (3 times, from 1/8)
SSIM_KIND = "SSIM, 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, mean over pixels and RGB (Wang et al. 2004)"


@dataclass
class NerfConfig:
    """Train a grid radiance field on a Blender-format scene; write metrics, renders and a checkpoint."""

    scene: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE_DIR")]
    """Scene folder with transforms_train.json and transforms_test.json (NeRF-synthetic layout)."""
    model: str = "dense"
    """Grid model: dense (DVGO style, coarse to fine), hash, planes or mulfagrid."""
    appearance: Literal["sh", "mlp"] | None = None
    """Appearance: SH coefficients in the grid (no MLP) or features + tiny MLP; default: the model's."""
    resolution: int = 128
    """Final grid resolution per axis (dense) or the finest scale of the other models."""
    steps: int = 3000
    """Optimizer steps (training stops earlier when time_budget is reached)."""
    time_budget: float | None = None
    """Training time limit in seconds (None: no limit); schedules follow whichever ends first."""
    batch_rays: int = 4096
    """Random training rays per step."""
    lr_grid: float | None = None
    """Adam learning rate of grid features (decays as 0.1^progress); default: the model's."""
    lr_other: float | None = None
    """Adam learning rate of heads and kernels; default: the model's."""
    alpha_init: float | None = None
    """Opacity per marching step of the untrained field (default: the model's)."""
    tv_weight: float = 0.0
    """Total-variation weight on the dense density grid (0: off)."""
    step_ratio: float = 0.5
    """Marching step in voxels of the (current) grid."""
    occ_resolution: int = 128
    """Occupancy-grid resolution per axis."""
    occ_every: int = 16
    """Update the occupancy grid every this many steps (from step occ_start)."""
    occ_start: int = 32
    """First step of occupancy updates (before it, every cell counts as occupied)."""
    aabb_scale: float = 1.5
    """Scene box [-s, s]^3 (the NeRF-synthetic objects fit in 1.5)."""
    carve: bool = True
    """Carve the occupancy grid with the training alpha masks (visual hull) and shrink the box to it."""
    downscale: int = 1
    """Integer image downscale factor (2: half resolution)."""
    white_background: bool = True
    """Composite RGBA images on white (standard protocol); False: black."""
    test_views: int | None = None
    """Evaluate on this many evenly spaced test views (None: all)."""
    save_renders: int | None = None
    """Save this many test renders and depth maps (None: all evaluated views)."""
    turntable_frames: int = 24
    """Frames of the turntable GIF (0: none); rendered at half the test resolution."""
    seed: int = 0
    """Random seed."""
    fast: bool = True
    """Use the C++ fast paths where they apply (compiled on first use); False: plain PyTorch references."""
    device: str = "auto"
    """Torch device: auto (cuda if available), cpu, cuda, ..."""
    progress: bool = True
    """Show a progress bar."""
    out: Path = Path("outputs/nerf")
    """Output folder for metrics.json, renders, depth maps, turntable.gif and checkpoint.pt."""


@dataclass
class MakeSceneConfig:
    """Render a mesh from cameras on a sphere into a Blender-format scene (RGBA + transforms files)."""

    mesh: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="MESH_OR_BUILTIN")] = "torus_knot"
    """Mesh file (OBJ, PLY, OFF, STL, ...) or built-in shape name (torus_knot)."""
    views: int = 50
    """Training views (Fibonacci lattice on the sphere)."""
    test_views: int = 10
    """Test views (also written as the val split)."""
    size: int = 128
    """Image width and height in pixels."""
    distance: float = 4.0
    """Camera distance from the origin (the mesh is normalised to radius 1)."""
    supersample: int = 2
    """Rays per pixel per axis (anti-aliasing)."""
    upper: bool = False
    """Cameras on the upper hemisphere only (like the NeRF-synthetic scenes)."""
    out: Path = Path("outputs/scene")
    """Output scene folder."""


def run_make_scene(cfg: MakeSceneConfig) -> Path:
    """CLI entry of ``gridfield make-scene``."""
    from gridfield.data.scene_maker import make_scene

    out = make_scene(cfg.mesh, cfg.out, cfg.views, cfg.test_views, cfg.size, cfg.distance, 1.0, cfg.supersample,
                     cfg.upper)
    print(f"wrote {cfg.views} train and {cfg.test_views} test views of {cfg.mesh} to {out}")
    return out


# ----------------------------------------------------------------------------------------------
# Marching step (the models are ``gridfield.presets.get("nerf", model)``: :mod:`gridfield.presets.nerf`)
# ----------------------------------------------------------------------------------------------
def _step_size(field: RadianceField, spec: presets.RadianceSpec, ratio: float) -> float:
    """Marching step: ``ratio`` voxels of the dense density grid, or of a ``resolution`` lattice."""
    res = dense_resolution(field.density_grid)
    ext = float((field.aabb[3:] - field.aabb[:3]).max())
    return ratio * ext / ((res - 1) if res else spec.resolution)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def _optimizer(field: RadianceField, lr_grid: float, lr_other: float) -> torch.optim.Adam:
    groups = [{"params": list(field.grid_parameters().values()), "lr": lr_grid, "base": lr_grid}]
    other = list(field.other_parameters().values())
    if other:
        groups.append({"params": other, "lr": lr_other, "base": lr_other})
    fused = field.aabb.device.type in ("cpu", "cuda")
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15, fused=fused)


def _refit_plan(resolution: int) -> list[tuple[float, int]]:
    """(progress, resolution) milestones: voxel count x2 at each of :data:`REFITS`, ending at ``resolution``."""
    return [(p, round(resolution * 2 ** ((k + 1 - len(REFITS)) / 3))) for k, p in enumerate(REFITS)]


def train_nerf(field: RadianceField, occ: OccupancyGrid, data: BlenderSplit, spec: presets.RadianceSpec,
               cfg: NerfConfig, settings: RenderSettings) -> tuple[RenderSettings, dict, presets.RadianceSpec]:
    """Train ``field`` in place on ``data``; returns the final render settings, training stats and the spec
    of the trained field (a new one after coarse-to-fine refits)."""
    from tqdm.auto import tqdm

    dev = field.aabb.device
    n, h, w, _ = data.images.shape
    pixels = data.images.reshape(-1, 3).to(dev)
    c2w = data.c2w.to(dev)
    lr_g, lr_o = cfg.lr_grid or spec.lr_grid, cfg.lr_other or spec.lr_other
    opt = _optimizer(field, lr_g, lr_o)
    plan = _refit_plan(cfg.resolution) if dense_resolution(field.density_grid) else []
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    bar = tqdm(total=cfg.steps, desc="nerf", unit="step", dynamic_ncols=True, disable=not cfg.progress)
    seconds, step, rays, samples, loss_v = 0.0, 0, 0, 0, float("nan")
    while True:
        p = max(step / cfg.steps, seconds / cfg.time_budget if cfg.time_budget else 0.0)
        if p >= 1.0:
            break
        t0 = time.perf_counter()
        if plan and p >= plan[0][0]:
            box = occ.occupied_aabb(margin_cells=3) if occ.updates > 0 else field.aabb
            box = torch.cat([torch.maximum(box[:3], field.aabb[:3]), torch.minimum(box[3:], field.aabb[3:])])
            res = plan.pop(0)[1]
            refit_dense(field, box, res)
            spec = spec.refit(res, field.aabb.tolist())
            settings = RenderSettings(**{**asdict(settings), "step": _step_size(field, spec, cfg.step_ratio)})
            opt = _optimizer(field, lr_g, lr_o)
        for g in opt.param_groups:
            g["lr"] = g["base"] * 0.1**p
        if step >= cfg.occ_start and (step - cfg.occ_start) % cfg.occ_every == 0:
            occ.update(field.density, settings.step, warmup=occ.updates == 0, fraction=0.25)
        idx = torch.randint(n * h * w, (cfg.batch_rays,), generator=gen).to(dev)
        img, pix = idx // (h * w), idx % (h * w)
        o, d = rays_from_pixels(c2w[img], data.K, pix % w, pix // w)
        out = render_rays(field, o, d, occ, field.aabb, settings, stratified=True)
        loss = (out["rgb"] - pixels[idx]).square().mean()
        total = loss + cfg.tv_weight * total_variation(field.density_grid) if cfg.tv_weight > 0 else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        loss_v = loss.item()
        if not math.isfinite(loss_v):
            raise FloatingPointError(f"loss became {loss_v} at step {step}; lower the learning rates")
        seconds += time.perf_counter() - t0
        step, rays, samples = step + 1, rays + cfg.batch_rays, samples + int(out["n_samples"])
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_v:.4f}", psnr=f"{-10 * math.log10(max(loss_v, 1e-10)):.2f}",
                            rays_s=f"{rays / seconds:.0f}", occ=f"{occ.occupied_fraction():.3f}")
    bar.close()
    stats = {"steps": step, "train_seconds": seconds, "rays_per_second": rays / max(seconds, 1e-9),
             "samples_per_ray": samples / max(rays, 1), "final_loss": loss_v,
             "final_train_psnr": -10 * math.log10(max(loss_v, 1e-10))}
    return settings, stats, spec


# ----------------------------------------------------------------------------------------------
# Evaluation, outputs, checkpoint reload
# ----------------------------------------------------------------------------------------------
def evenly_spaced(n_total: int, n: int | None) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them for None or n >= n_total)."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted({round(i * (n_total - 1) / max(n - 1, 1)) for i in range(n)})


def evaluate(field: RadianceField, occ: OccupancyGrid, test: BlenderSplit, settings: RenderSettings,
             out: Path | None = None, save: int | None = None) -> dict:
    """Render every view of ``test``; mean PSNR and SSIM (see :data:`SSIM_KIND`) over views, eval speed.

    Saves the first ``save`` (all for None) renders and depth maps to ``out`` when given.
    """
    from gridfield.metrics import psnr, ssim
    from gridfield.render.outputs import depth_image, save_png

    psnrs, ssims, seconds = [], [], 0.0
    for i in range(test.images.shape[0]):
        t0 = time.perf_counter()
        r = render_camera(field, test.c2w[i].to(field.aabb.device), test.K, occ, field.aabb, settings)
        seconds += time.perf_counter() - t0
        pred, gt = r["rgb"].clamp(0, 1).cpu(), test.images[i]
        psnrs.append(psnr(pred, gt))
        ssims.append(float(ssim(pred, gt)) if min(gt.shape[:2]) >= 11 else float("nan"))
        if out is not None and (save is None or i < save):
            save_png(out / f"test_{i:03d}.png", pred)
            save_png(out / f"depth_{i:03d}.png", depth_image(r["depth"], r["opacity"], test.near, test.far))
    n_rays = test.images.shape[0] * test.K.width * test.K.height
    return {"psnr": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims), "psnr_per_view": psnrs,
            "ssim_per_view": ssims, "eval_seconds": seconds, "eval_rays_per_second": n_rays / max(seconds, 1e-9)}


def orbit_camera(c2w: torch.Tensor) -> dict:
    """Mean distance and elevation (degrees) of cameras ``[N, 4, 4]`` (for turntable paths)."""
    pos = c2w[:, :3, 3].double()
    r = pos.norm(dim=-1)
    return {"radius": float(r.mean()), "elevation": float(torch.rad2deg(torch.asin(pos[:, 2] / r)).mean())}


def load_nerf(path: str | Path, device: str = "cpu") -> tuple[RadianceField, OccupancyGrid, RenderSettings, dict]:
    """Reload a checkpoint written by :func:`run`: ``(field, occupancy, settings, camera)`` (eval mode)."""
    from gridfield.render.outputs import read_checkpoint

    ck = read_checkpoint(path)
    field = presets.RadianceSpec.from_dict(ck["spec"]).build()
    field.load_state_dict(ck["state_dict"])
    occ_state = ck["occupancy"]
    occ = OccupancyGrid(occ_state["aabb"], resolution=round(occ_state["ema"].numel() ** (1 / 3)))
    occ.load_state_dict(occ_state)
    return field.to(device).eval(), occ.to(device), RenderSettings(**ck["settings"]), ck["camera"]


def render_path(field: RadianceField, occ: OccupancyGrid, settings: RenderSettings, poses: torch.Tensor,
                K: Intrinsics) -> list[dict]:
    """Render cameras ``poses [N, 4, 4]`` (e.g. :func:`gridfield.render.rays.orbit_poses`) with intrinsics ``K``."""
    dev = field.aabb.device
    return [render_camera(field, c.to(dev), K, occ, field.aabb, settings) for c in poses]


def _check(cfg: NerfConfig) -> None:
    bad = [(k, v) for k, v in (("steps", cfg.steps), ("batch_rays", cfg.batch_rays), ("resolution", cfg.resolution),
                               ("occ_resolution", cfg.occ_resolution), ("occ_every", cfg.occ_every)) if v < 1]
    if bad or cfg.resolution < 4 or cfg.step_ratio <= 0 or cfg.aabb_scale <= 0:
        raise InputError(f"invalid options {bad or ''}: need steps, batch_rays, occ_* >= 1, resolution >= 4, "
                         f"step_ratio > 0, aabb_scale > 0")
    if cfg.alpha_init is not None and not 0 < cfg.alpha_init < 1:
        raise InputError(f"alpha_init must be in (0, 1), got {cfg.alpha_init}")
    if cfg.time_budget is not None and cfg.time_budget <= 0:
        raise InputError(f"time_budget must be positive, got {cfg.time_budget}")


def run(cfg: NerfConfig) -> dict:
    """CLI entry of ``gridfield nerf``: train, evaluate, write outputs to ``cfg.out``; returns the metrics."""
    from gridfield.models import count_parameters
    from gridfield.render.outputs import save_checkpoint, save_gif
    from gridfield.render.rays import orbit_poses
    from gridfield.tasks.train import resolve_device, seed_everything

    _check(cfg)
    dev = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    bg = (1.0, 1.0, 1.0) if cfg.white_background else (0.0, 0.0, 0.0)
    train = load_blender(cfg.scene, "train", cfg.downscale, bg)
    test = load_blender(cfg.scene, "test", cfg.downscale, bg)
    keep = evenly_spaced(test.images.shape[0], cfg.test_views)
    test = BlenderSplit(test.images[keep], test.c2w[keep], test.K, [test.names[i] for i in keep], test.near, test.far)
    first = 2 * cfg.aabb_scale / max(8, cfg.resolution // 2) * cfg.step_ratio
    spec = presets.get("nerf", cfg.model, resolution=cfg.resolution, appearance=cfg.appearance,
                       aabb_scale=cfg.aabb_scale, step=first, alpha_init=cfg.alpha_init)
    occ = OccupancyGrid(torch.tensor(list(spec.aabb)), cfg.occ_resolution).to(dev)
    if cfg.carve and train.alphas is not None:
        occ.carve(train.c2w, train.K, train.alphas, train.near)
        if not occ.binary.any():
            raise InputError("carving with the training alpha masks left no occupied cell; check the poses "
                             "(OpenGL camera-to-world) or pass --no-carve")
        spec = replace(spec, aabb=occ.occupied_aabb(margin_cells=2).tolist())
    field = spec.build().to(dev)
    backend = "auto" if cfg.fast else "reference"
    field.set_backend(backend)
    settings = RenderSettings(train.near, train.far, _step_size(field, spec, cfg.step_ratio), bg, backend=backend)
    settings, stats, spec = train_nerf(field, occ, train, spec, cfg, settings)
    cfg.out.mkdir(parents=True, exist_ok=True)
    field.eval()
    ev = evaluate(field, occ, test, settings, cfg.out, cfg.save_renders)
    camera = {"K": asdict(train.K), **orbit_camera(train.c2w)}
    save_checkpoint(cfg.out / "checkpoint.pt", field, occ, spec.to_dict(), asdict(settings), camera)
    if cfg.turntable_frames > 0:
        poses = orbit_poses(cfg.turntable_frames, camera["radius"], camera["elevation"])
        frames = render_path(field, occ, settings, poses, train.K.scaled(2))
        save_gif(cfg.out / "turntable.gif", [f["rgb"] for f in frames])
    metrics = {"psnr": ev["psnr"], "ssim": ev["ssim"], "ssim_kind": SSIM_KIND,
               "lpips": None, "lpips_note": "not computed: no local LPIPS network weights (never downloaded)",
               "train_seconds": stats["train_seconds"], "params": count_parameters(field),
               "n_test_views": len(keep), "rays_per_second": stats["rays_per_second"],
               "eval_rays_per_second": ev["eval_rays_per_second"], "model": cfg.model,
               "appearance": spec.field["appearance"], "final_resolution": spec.resolution,
               "device": str(dev), "threads": torch.get_num_threads(),
               **{k: v for k, v in stats.items() if k not in ("train_seconds", "rays_per_second")},
               "psnr_per_view": ev["psnr_per_view"], "ssim_per_view": ev["ssim_per_view"],
               "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}}
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"test PSNR {ev['psnr']:.2f} dB, SSIM {ev['ssim']:.4f} over {len(keep)} views; "
          f"train {stats['train_seconds']:.1f} s ({stats['rays_per_second']:.0f} rays/s); outputs in {cfg.out}")
    return metrics
