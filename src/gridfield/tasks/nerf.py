"""``gridfield nerf`` and ``gridfield make-scene``: novel view synthesis on Blender-format scenes.

A grid radiance field (:mod:`gridfield.presets.nerf`) is trained on random rays by the training core
(:class:`~gridfield.tasks.nerf_train.NerfTask`: occupancy-grid marching, coarse to fine for dense
grids, learning rates ``0.1^progress``), evaluated by the standard protocol (all test views, PSNR and
SSIM averaged over views), and written atomically to ``--out`` with renders, depth maps, a turntable
GIF and a reloadable checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from gridfield import memory, presets
from gridfield.data.captures import detect_format, load_scene
from gridfield.errors import InputError
from gridfield.models import count_parameters
from gridfield.render import outputs
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.paths import capture_orbit, spiral_poses, stored_orbit_path
from gridfield.render.pipeline import RenderSettings
from gridfield.tasks.common import apply_backend, finish_run, run_record, start_run
from gridfield.tasks.nerf_eval import SSIM_KIND, evaluate, evenly_spaced, load_nerf, render_path
from gridfield.tasks.nerf_train import CURVE_SECONDS, Curve, NerfSchedule, step_size, train_nerf
from gridfield.training import Nested, check_options, config_dict, finite, resume_key, seed_everything, train_defaults

__all__ = ["MakeSceneConfig", "NerfConfig", "evaluate", "load_nerf", "render_path", "run", "run_make_scene"]


@dataclass
class NerfConfig:
    """Train a grid radiance field on a Blender-format scene; write metrics, renders and a checkpoint."""

    scene: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE_DIR")]
    """Scene folder: Blender (transforms_train.json), Instant-NGP / nerfstudio (transforms.json), LLFF
    (poses_bounds.npy) or COLMAP (sparse/0); see docs/nerf.md."""
    format: Literal["auto", "blender", "transforms", "llff", "colmap"] = "auto"
    """Scene format (auto: detected from the files)."""
    missing_images: Literal["skip", "error"] = "skip"
    """transforms.json frames without an image: skip them (and say how many) or refuse the scene."""
    test_every: int = 8
    """Hold out every this-many-th frame for testing (formats without their own test split)."""
    model: str = "dense"
    """Grid model: dense (DVGO style, coarse to fine), hash (Instant-NGP; hash-small, hash-large), planes,
    mulfagrid (dense layout) or mulfagrid-hash (the hash preset's levels with MulFA kernels)."""
    appearance: Literal["sh", "mlp"] | None = None
    """Appearance: SH coefficients in the grid (no MLP) or features + tiny MLP; default: the model's."""
    resolution: int = 128
    """Final grid resolution per axis (dense) or the finest scale of the other models."""
    batch_rays: int = 4096
    """Random training rays per step and process."""
    alpha_init: float | None = None
    """Opacity per marching step of the untrained field (default: the model's)."""
    tv_weight: float = 0.0
    """Total-variation weight on the dense density grid (0: off)."""
    distortion_weight: float = 0.0
    """Weight of Mip-NeRF 360's distortion loss (mean over the batch's rays; distances normalised to the
    marched range): pulls each ray's weight into one short interval, against floaters and fog in captures.
    0: off. Mip-NeRF 360 uses 0.01."""
    step_ratio: float = 0.5
    """Marching step in voxels of the (current) grid."""
    lr_schedule: Literal["exp", "step"] = "exp"
    """Learning-rate decay over the run's progress: exp (0.1^progress, DVGO) or step (flat, x0.33 at 50, 75
    and 90%, Instant-NGP / nerfacc)."""
    occ_resolution: int = 128
    """Occupancy-grid resolution per axis."""
    occ_every: int = 16
    """Update the occupancy grid every this many steps (from step occ_start)."""
    occ_start: int = 32
    """First step of occupancy updates (before it, every cell counts as occupied)."""
    aabb_scale: float = 1.5
    """Scene box [-s, s]^3 (the NeRF-synthetic objects fit in 1.5); --scene-space box only."""
    scene_space: Literal["auto", "box", "contract", "ndc"] = "auto"
    """Where the field lives: the scene box, Mip-NeRF 360's contracted space (unbounded scenes: the inner
    ball of --scene-radius plus everything beyond, squeezed into radius 2) or NDC (forward-facing LLFF
    scenes). auto: box for Blender scenes, ndc for LLFF, contract for transforms.json and COLMAP."""
    contraction: Literal["l2", "linf"] = "l2"
    """Contraction norm (--scene-space contract): l2 (a ball, Mip-NeRF 360) or linf (a cube, nerfstudio)."""
    scene_radius: float = 1.0
    """Radius of the uncontracted inner region (--scene-space contract; the cameras fill [-1, 1]^3)."""
    far: float = 1000.0
    """Far end of the rays in contracted space, in scene units (what lies beyond is background)."""
    background_model: Literal["auto", "none", "sh"] = "auto"
    """Learned background (sh: a degree-3 spherical-harmonics environment map) or the fixed
    --white-background colour (none). auto: sh for contract and ndc, none for the box."""
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
    curve_views: int = 0
    """Render this many evenly spaced test views during training, at the --curve-seconds of the training
    clock (a time-to-PSNR curve: history.json rows with curve_psnr; not counted as training time). 0: off."""
    curve_seconds: tuple[float, ...] = CURVE_SECONDS
    """Training seconds at which the curve views are rendered."""
    train: Nested = train_defaults(steps=3000)


def _check(cfg: NerfConfig) -> None:
    check_options(("--batch-rays", cfg.batch_rays, cfg.batch_rays >= 1, ">= 1"),
                  ("--resolution", cfg.resolution, cfg.resolution >= 4, ">= 4"),
                  ("--occ-resolution", cfg.occ_resolution, cfg.occ_resolution >= 1, ">= 1"),
                  ("--occ-every", cfg.occ_every, cfg.occ_every >= 1, ">= 1"),
                  ("--occ-start", cfg.occ_start, cfg.occ_start >= 0, ">= 0"),
                  ("--step-ratio", cfg.step_ratio, finite(cfg.step_ratio) and cfg.step_ratio > 0, "finite and > 0"),
                  ("--aabb-scale", cfg.aabb_scale, finite(cfg.aabb_scale) and cfg.aabb_scale > 0, "finite and > 0"),
                  ("--scene-radius", cfg.scene_radius, finite(cfg.scene_radius) and cfg.scene_radius > 0,
                   "finite and > 0"),
                  ("--far", cfg.far, finite(cfg.far) and cfg.far > cfg.scene_radius, "finite and > --scene-radius"),
                  ("--tv-weight", cfg.tv_weight, finite(cfg.tv_weight) and cfg.tv_weight >= 0, "finite and >= 0"),
                  ("--distortion-weight", cfg.distortion_weight,
                   finite(cfg.distortion_weight) and cfg.distortion_weight >= 0, "finite and >= 0"),
                  ("--alpha-init", cfg.alpha_init, cfg.alpha_init is None or 0 < cfg.alpha_init < 1, "in (0, 1)"),
                  ("--downscale", cfg.downscale, cfg.downscale >= 1, ">= 1"),
                  ("--test-every", cfg.test_every, cfg.test_every >= 2, ">= 2"),
                  ("--test-views", cfg.test_views, cfg.test_views is None or cfg.test_views >= 1, ">= 1 (or None)"),
                  ("--save-renders", cfg.save_renders, cfg.save_renders is None or cfg.save_renders >= 0, ">= 0"),
                  ("--turntable-frames", cfg.turntable_frames, cfg.turntable_frames >= 0, ">= 0"),
                  ("--curve-views", cfg.curve_views, cfg.curve_views >= 0, ">= 0"),
                  ("--curve-seconds", cfg.curve_seconds, all(finite(v) and v > 0 for v in cfg.curve_seconds)
                   and list(cfg.curve_seconds) == sorted(cfg.curve_seconds), "finite, > 0 and increasing"))
    if cfg.model not in presets.models("nerf"):
        raise InputError(f"unknown model {cfg.model!r} for nerf; choose one of {', '.join(presets.models('nerf'))}")
    memory.guard(memory.estimate_grid_bytes(cfg.occ_resolution, 2, copies=1),
                 f"a {cfg.occ_resolution}^3 occupancy grid", f"--occ-resolution {cfg.occ_resolution}")


def _check_memory(spec: presets.RadianceSpec, cfg: NerfConfig) -> None:
    """Refuse a field whose parameters, gradients and Adam moments (at the final resolution) exceed memory."""
    final = spec.refit(cfg.resolution, spec.aabb) if cfg.model == "dense" else spec
    skeleton = memory.meta_module(final.build)
    if skeleton is not None:
        memory.guard(4 * memory.module_bytes(skeleton), f"the {cfg.model} radiance field (parameters, "
                     "gradients and Adam moments)", f"--resolution {cfg.resolution}")


def _spec(cfg: NerfConfig, half_size: float, unit: float = 1.0) -> presets.RadianceSpec:
    """The model's spec in the box ``[-half_size, half_size]^3`` (first marching step: half a starting voxel,
    ``unit`` world units per box unit: the contracted space's inner radius)."""
    first = 2 * half_size / max(8, cfg.resolution // 2) * cfg.step_ratio * unit
    return presets.get("nerf", cfg.model, resolution=cfg.resolution, appearance=cfg.appearance,
                       aabb_scale=half_size, step=first, alpha_init=cfg.alpha_init)


#: the field's box in NDC: the reference frustum is [-1, 1]^3; the other cameras see a little beyond it
NDC_BOX = (-1.5, -1.5, -1.0, 1.5, 1.5, 1.0)


def border_color(images: torch.Tensor) -> torch.Tensor:
    """``[3]``: the median colour of the outermost pixel ring of ``images [N, H, W, 3]`` (where the background
    shows most; what the learned background starts at)."""
    ring = torch.cat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1)
    return ring.reshape(-1, 3).median(0).values


def scene_space(cfg: NerfConfig, fmt: str) -> str:
    """The space ``box | contract | ndc`` of ``--scene-space`` for a scene of format ``fmt``."""
    if cfg.scene_space != "auto":
        return cfg.scene_space
    return {"blender": "box", "llff": "ndc"}.get(fmt, "contract")


def _space_spec(cfg: NerfConfig, space: str, scene) -> presets.RadianceSpec:
    """The field's spec in ``space``, with the learned background of ``--background-model``."""
    if space == "contract":
        spec = _spec(cfg, 2.0, cfg.scene_radius)
    elif space == "ndc":
        spec = replace(_spec(cfg, 1.5), aabb=NDC_BOX)
    elif scene.format != "blender":  # a re-oriented capture: cameras in [-1, 1]^3, content around them
        spec = _spec(cfg, max(cfg.aabb_scale, scene.extra.get("scene_radius", 0.0)))
    else:
        spec = _spec(cfg, cfg.aabb_scale)
    learned = cfg.background_model == "sh" or (cfg.background_model == "auto" and space != "box")
    return replace(spec, field={**spec.field, "background": "sh"}) if learned else spec


def run(cfg: NerfConfig) -> dict:
    """CLI entry of ``gridfield nerf``: train, evaluate, write ``--out`` atomically; returns the metrics."""
    _check(cfg)
    t = cfg.train
    ctx = start_run(t, Path("outputs") / "nerf" / f"{Path(cfg.scene).name}-{cfg.model}")
    spec = _spec(cfg, cfg.aabb_scale)
    _check_memory(spec, cfg)
    seed_everything(t.seed)
    bg = (1.0, 1.0, 1.0) if cfg.white_background else (0.0, 0.0, 0.0)
    fmt = detect_format(cfg.scene) if cfg.format == "auto" else cfg.format
    space = scene_space(cfg, fmt)
    train, test, scene = load_scene(cfg.scene, fmt, cfg.downscale, bg, cfg.missing_images, cfg.test_every,
                                    ndc=space == "ndc")
    spec = _space_spec(cfg, space, scene)
    every = test
    keep = evenly_spaced(test.images.shape[0], cfg.test_views)
    test = replace(test.subset(keep), alphas=None)
    dev = ctx.device
    occ = OccupancyGrid(torch.tensor(list(spec.aabb)), cfg.occ_resolution).to(dev)
    if cfg.carve and train.alphas is not None and space == "box":  # carving projects world cell centres
        occ.carve(train.c2w, train.Ks or train.K, train.alphas, train.near)
        if not occ.binary.any():
            raise InputError("carving with the training alpha masks left no occupied cell; check the poses "
                             "(OpenGL camera-to-world) or pass --no-carve")
        spec = replace(spec, aabb=occ.occupied_aabb(margin_cells=2).tolist())
    field = apply_backend(spec.build().to(dev), t.backend)
    field.init_background(border_color(train.images))
    contracted = space == "contract"
    settings = RenderSettings(train.near, cfg.far if contracted else train.far, 1.0, bg, backend=t.backend,
                              contraction=cfg.contraction if contracted else "none", scene_radius=cfg.scene_radius,
                              ndc=scene.extra.get("ndc") if space == "ndc" else None)
    settings = replace(settings, step=step_size(field, spec, cfg.step_ratio, settings.step_unit))
    opts = NerfSchedule(cfg.batch_rays, cfg.tv_weight, cfg.step_ratio, cfg.occ_every, cfg.occ_start, cfg.resolution,
                        cfg.lr_schedule, cfg.distortion_weight)
    config = config_dict(cfg)
    key = resume_key(config, ignore=("test_views", "save_renders", "turntable_frames", "curve_views",
                                     "curve_seconds"))
    curve = None
    if cfg.curve_views:
        ci = evenly_spaced(every.images.shape[0], cfg.curve_views)
        curve = Curve(replace(every.subset(ci), alphas=None), tuple(float(v) for v in cfg.curve_seconds))
    spec, settings, stats = train_nerf(field, occ, train, spec, t, opts, settings, curve, state_path=ctx.state,
                                       resume_key=key)
    if not ctx.dist.is_main:
        finish_run(ctx, lambda d: None)
        return stats
    field.eval()
    camera = {"K": asdict(train.K), **capture_orbit(train.c2w), "format": scene.format,
              "world_from_scene": scene.world_from_scene.tolist()}
    metrics: dict = {}

    def write(d: Path) -> None:
        ev = evaluate(field, occ, test, settings, d, cfg.save_renders)
        outputs.save_checkpoint(d / "checkpoint.pt", field, occ, spec.to_dict(), asdict(settings), camera,
                                train.c2w)
        if cfg.turntable_frames > 0:
            poses = (spiral_poses(train.c2w, cfg.turntable_frames) if space == "ndc" else  # forward-facing
                     stored_orbit_path(cfg.turntable_frames, camera))
            frames = render_path(field, occ, settings, poses, train.K.scaled(2))
            outputs.save_gif(d / "turntable.gif", [f["rgb"] for f in frames])
        metrics.update({
            "psnr": ev["psnr"], "ssim": ev["ssim"], "ssim_kind": SSIM_KIND,
            "lpips": None, "lpips_note": "not computed: no local LPIPS network weights (never downloaded)",
            "train_seconds": stats["train_seconds"], "params": count_parameters(field),
            "n_test_views": len(keep), "rays_per_second": stats["rays_per_second"],
            "eval_rays_per_second": ev["eval_rays_per_second"], "model": cfg.model,
            "appearance": spec.field["appearance"], "final_resolution": spec.resolution,
            "device": str(dev), "threads": torch.get_num_threads(), "world_size": ctx.dist.world,
            **{k: v for k, v in stats.items() if k not in ("train_seconds", "rays_per_second", "history")},
            "scene_format": scene.format, "scene_space": space, "world_from_scene": scene.world_from_scene.tolist(),
            "skipped_frames": scene.skipped,
            "psnr_per_view": ev["psnr_per_view"], "ssim_per_view": ev["ssim_per_view"], "spec": spec.to_dict(),
            "config": config, **run_record("nerf", dev)})
        (d / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (d / "history.json").write_text(json.dumps(stats["history"], indent=1) + "\n")

    finish_run(ctx, write)
    print(f"test PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} over {len(keep)} views; "
          f"train {stats['train_seconds']:.1f} s ({stats['rays_per_second']:.0f} rays/s); outputs in {ctx.out}")
    return metrics


@dataclass
class MakeSceneConfig:
    """Render a mesh into a synthetic scene: Blender format (cameras on a sphere; RGBA + transforms files) or,
    with --layout llff, a forward-facing LLFF capture (poses_bounds.npy + images_8/; load it with
    `gridfield nerf SCENE --downscale 8`)."""

    mesh: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="MESH_OR_BUILTIN")] = "torus_knot"
    """Mesh file (OBJ, PLY, OFF, STL, ...) or built-in shape name (torus_knot)."""
    layout: Literal["blender", "llff"] = "blender"
    """blender: train/test/val views from Fibonacci lattices on a sphere, RGBA on transparent background.
    llff: the mesh in front of a textured wall and floor, seen by a jittered, roughly planar grid of cameras
    looking along one axis (a handheld forward-facing capture); written as LLFF's poses_bounds.npy ([N, 17]:
    down/right/back axes, position and (h, w, f) of the 8x larger full-size images, then the near/far bounds:
    0.1 and 99.9 percentiles of each view's hit depths) and images_8/ (at --size); every 8th view is the
    loader's test set, so --test-views and --upper do not apply."""
    views: int = 50
    """Training views (blender: Fibonacci lattice on the sphere); llff: all views (>= 2)."""
    test_views: int = 10
    """Test views (also written as the val split); blender only."""
    size: int = 128
    """Image width in pixels (and the height unless --height); llff: the 1/8 size (LLFF's images_8: 504)."""
    height: int | None = None
    """Image height in pixels (None: --size for blender, 3/4 of --size for llff, e.g. 504 -> 378)."""
    distance: float = 4.0
    """Camera distance from the origin (the mesh is normalised to radius 1); llff: of the camera plane."""
    spread: float = 0.25
    """llff: width of the camera grid over --distance (its height is 3/4 of that)."""
    supersample: int = 2
    """Rays per pixel per axis (anti-aliasing)."""
    upper: bool = False
    """Cameras on the upper hemisphere only (like the NeRF-synthetic scenes); blender only."""
    out: Path = Path("outputs/scene")
    """Output scene folder (written atomically: all views and pose files, or nothing)."""


def run_make_scene(cfg: MakeSceneConfig) -> Path:
    """CLI entry of ``gridfield make-scene``: the scene folder appears whole or not at all (every option,
    the memory of one view and ``--out`` are checked by :func:`make_scene` before the mesh is loaded)."""
    from gridfield.data.scene_maker import make_scene  # deferred: needs the optional mesh extra

    llff = cfg.layout == "llff"
    check_options(("--views", cfg.views, cfg.views >= (2 if llff else 1), ">= 2 for --layout llff" if llff else ">= 1"),
                  ("--test-views", cfg.test_views, cfg.test_views >= 1, ">= 1"),
                  ("--size", cfg.size, cfg.size >= 4, ">= 4"),
                  ("--height", cfg.height, cfg.height is None or cfg.height >= 4, ">= 4 (or None)"),
                  ("--supersample", cfg.supersample, cfg.supersample >= 1, ">= 1"),
                  ("--distance", cfg.distance, finite(cfg.distance) and cfg.distance > 1.0,
                   "finite and > 1 (the mesh is normalised to radius 1)"),
                  ("--spread", cfg.spread, finite(cfg.spread) and 0 < cfg.spread <= 2, "finite and in (0, 2]"))
    out = make_scene(cfg.mesh, cfg.out, cfg.views, cfg.test_views, cfg.size, cfg.distance, 1.0, cfg.supersample,
                     cfg.upper, cfg.layout, cfg.height, cfg.spread)
    if llff:
        print(f"wrote a forward-facing LLFF scene of {cfg.views} views of {cfg.mesh} to {out} (images_8/; "
              "train on it with --downscale 8)")
    else:
        print(f"wrote {cfg.views} train and {cfg.test_views} test views of {cfg.mesh} to {out}")
    return out
