"""``gridfield render`` (a camera path into a video) and ``gridfield export-mesh`` (a coloured mesh) from a
checkpoint of ``gridfield nerf``.

render: ``--path orbit`` (around the training cameras' focus at their mean distance and elevation: a full
turn, or a sweep over the captured arc for a one-sided capture; :func:`gridfield.render.paths.capture_orbit`),
``spiral`` (LLFF's path around the mean training camera), ``interpolate`` (through the training
cameras) or a JSON file (:func:`gridfield.render.paths.read_path_file`, in the capture's frame);
``--frames N``; MP4 through imageio-ffmpeg, or GIF (for ``.gif``, or when ffmpeg is absent: said).

export-mesh: the density on an ``R^3`` lattice of the occupancy box, marching cubes
(scikit-image) at the density whose opacity over one marching step is ``--alpha``, per-vertex colour
seen along the density gradient (from outside), written as PLY (trimesh) in the scene's original frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

from gridfield import memory
from gridfield.errors import InputError
from gridfield.outdir import check_out_file, write_file_atomically
from gridfield.render import outputs
from gridfield.render.paths import interpolate_poses, read_path_file, spiral_poses, stored_orbit_path
from gridfield.render.pipeline import render_camera
from gridfield.render.rays import Intrinsics
from gridfield.render.spaces import ndc_to_world, uncontract
from gridfield.tasks.nerf_eval import load_nerf
from gridfield.training import check_options, finite


@dataclass
class RenderVideoConfig:
    """Render a camera path of a NeRF checkpoint into a video (MP4, or GIF)."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """checkpoint.pt written by `gridfield nerf`."""
    path: str = "orbit"
    """Camera path: orbit, spiral, interpolate, or a JSON file of camera-to-world poses."""
    frames: int = 120
    """Frames of the video."""
    fps: int = 30
    """Frames per second."""
    downscale: float = 1.0
    """Render at the training resolution divided by this."""
    out: Path = Path("video.mp4")
    """Output video (.mp4, or .gif)."""
    progress: bool = True
    """Show a progress bar."""


def _poses(cfg: RenderVideoConfig, camera: dict) -> torch.Tensor:
    train = camera.get("train_c2w")
    if cfg.path == "orbit":
        return stored_orbit_path(cfg.frames, camera)
    if cfg.path in ("spiral", "interpolate"):
        if train is None:
            raise InputError(f"--path {cfg.path} needs the training cameras, which {str(cfg.checkpoint)!r} does "
                             "not store (an older checkpoint); use --path orbit or a path file")
        return spiral_poses(train, cfg.frames) if cfg.path == "spiral" else interpolate_poses(train, cfg.frames)
    if not cfg.path.endswith(".json"):
        raise InputError(f"--path must be orbit, spiral, interpolate or a .json file, got {cfg.path!r}")
    return read_path_file(cfg.path, camera.get("world_from_scene"))


def _write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import imageio.v3 as iio

    if path.suffix.lower() == ".gif":
        iio.imwrite(path, np.stack(frames), duration=int(1000 / fps), loop=0)
    else:  # H.264 in yuv420p needs even sizes: an odd last row or column is dropped
        video = np.stack(frames)
        h, w = video.shape[1] // 2 * 2, video.shape[2] // 2 * 2
        iio.imwrite(path, video[:, :h, :w], fps=fps, codec="libx264", macro_block_size=1, plugin="FFMPEG")


def ffmpeg_available() -> bool:
    """Whether imageio can write MP4 (the imageio-ffmpeg package and its bundled ffmpeg)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
        return True
    except (ImportError, RuntimeError):
        return False


def run_render_video(cfg: RenderVideoConfig) -> dict:
    """CLI entry of ``gridfield render``: writes ``cfg.out`` atomically; returns what it wrote."""
    check_options(("--frames", cfg.frames, cfg.frames >= 1, ">= 1"),
                  ("--fps", cfg.fps, 1 <= cfg.fps <= 240, "in [1, 240]"),
                  ("--downscale", cfg.downscale, finite(cfg.downscale) and cfg.downscale > 0, "finite and > 0"))
    out = Path(cfg.out)
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise InputError(f"--out {str(out)!r} must end in .mp4 or .gif")
    if out.suffix.lower() == ".mp4" and not ffmpeg_available():
        out = out.with_suffix(".gif")
        print(f"note: imageio-ffmpeg is not installed (pip install 'gridfield[video]'); writing {out} instead")
    check_out_file(out)
    field, occ, settings, camera = load_nerf(cfg.checkpoint)
    if settings.ndc is not None and cfg.path == "orbit":
        raise InputError(f"{cfg.checkpoint}: a forward-facing (NDC) scene is seen from the front only; use --path "
                         "spiral or interpolate")
    K = Intrinsics(**camera["K"])
    if cfg.downscale != 1:
        K = K.scaled(cfg.downscale)
    if K.width < 2 or K.height < 2:
        raise InputError(f"--downscale {cfg.downscale} leaves a {K.width}x{K.height} image")
    memory.guard(cfg.frames * K.width * K.height * 3 + memory.estimate_render_bytes(K.height, K.width, 3),
                 f"the video ({cfg.frames} frames of {K.width} x {K.height})", f"--frames {cfg.frames}")
    poses = _poses(cfg, camera)
    frames = []
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(poses), desc="render", unit="frame", dynamic_ncols=True)
    for c2w in poses:
        rgb = render_camera(field, c2w.to(field.aabb.device), K, occ, field.aabb, settings)["rgb"]
        frames.append(outputs.to_uint8(rgb))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    write_file_atomically(out, lambda tmp: _write_video(tmp, frames, cfg.fps), "--out")
    print(f"rendered {len(frames)} frames of {K.width}x{K.height} ({cfg.path}) -> {out}")
    return {"frames": len(frames), "width": K.width, "height": K.height, "out": str(out)}


@dataclass
class ExportMeshConfig:
    """Extract a coloured mesh from a NeRF checkpoint's density (marching cubes) as PLY."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """checkpoint.pt written by `gridfield nerf`."""
    resolution: int = 256
    """Lattice points per axis of the occupancy box."""
    alpha: float = 0.2
    """Surface level: the density whose opacity over one marching step (the step the field was trained
    with) is this."""
    out: Path = Path("mesh.ply")
    """Output mesh (.ply, .obj or .glb: trimesh's writers)."""


@torch.no_grad()
def density_lattice(field, aabb: torch.Tensor, res: int, chunk: int = 1 << 18) -> np.ndarray:
    """Density ``[res, res, res]`` (x index slowest) at the lattice points spanning ``aabb``."""
    axes = [torch.linspace(float(aabb[i]), float(aabb[i + 3]), res) for i in range(3)]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    pts = torch.stack([x, y, z], -1).reshape(-1, 3)
    dev = field.aabb.device
    vals = [field.density(pts[s : s + chunk].to(dev)).cpu() for s in range(0, pts.shape[0], chunk)]
    return torch.cat(vals).reshape(res, res, res).numpy()


def run_export_mesh(cfg: ExportMeshConfig) -> dict:
    """CLI entry of ``gridfield export-mesh``: writes ``cfg.out`` atomically; returns the mesh size."""
    check_options(("--resolution", cfg.resolution, 8 <= cfg.resolution <= 2048, "in [8, 2048]"),
                  ("--alpha", cfg.alpha, finite(cfg.alpha) and 0 < cfg.alpha < 1, "in (0, 1)"))
    if Path(cfg.out).suffix.lower() not in (".ply", ".obj", ".glb"):
        raise InputError(f"--out {str(cfg.out)!r} must end in .ply, .obj or .glb")
    check_out_file(cfg.out)
    try:
        import trimesh  # deferred: the optional mesh extra
        from skimage.measure import marching_cubes
    except ImportError:
        raise InputError("export-mesh needs trimesh: pip install 'gridfield[mesh]'") from None
    r = cfg.resolution
    memory.guard(r**3 * 4 * 6, f"the {r}^3 density lattice", f"--resolution {r}")
    field, occ, settings, camera = load_nerf(cfg.checkpoint)
    aabb = occ.occupied_aabb(margin_cells=2).cpu() if occ.n_updates > 0 else field.aabb.cpu()
    if settings.contraction != "none":  # the inner region only: beyond it the lattice would be stretched to infinity
        aabb = torch.cat([aabb[:3].clamp(min=-1.0), aabb[3:].clamp(max=1.0)])
    sigma = density_lattice(field, aabb, r)
    spacing = ((aabb[3:] - aabb[:3]) / (r - 1)).numpy().astype(np.float64)
    level = -math.log(1 - cfg.alpha) / settings.step
    if not (sigma.max() > level > sigma.min()):
        raise InputError(f"the density ({sigma.min():.3g} to {sigma.max():.3g}) never crosses the surface level "
                         f"{level:.3g} (--alpha {cfg.alpha}); try another --alpha")
    verts, faces, _, _ = marching_cubes(sigma, level, spacing=tuple(spacing))
    verts = verts + aabb[:3].numpy()
    colors = _vertex_colors(field, torch.from_numpy(verts).float())
    verts = scene_points(torch.from_numpy(verts), settings).numpy()
    T = np.asarray(camera.get("world_from_scene", np.eye(4)), np.float64)
    world = verts @ T[:3, :3].T + T[:3, 3]  # back to the capture's frame
    # a similarity with positive scale keeps the orientation; the winding of marching_cubes stays valid
    mesh = trimesh.Trimesh(world, faces, vertex_colors=colors, process=False)
    write_file_atomically(cfg.out, lambda tmp: mesh.export(tmp), "--out")
    print(f"mesh with {len(verts)} vertices and {len(faces)} faces (level {level:.3g}) -> {cfg.out}")
    return {"vertices": int(len(verts)), "faces": int(len(faces)), "level": level, "out": str(cfg.out)}


def scene_points(x: torch.Tensor, settings) -> torch.Tensor:
    """Field-space points ``[N, 3]`` -> the normalised scene frame: uncontracted (``settings.contraction``),
    out of NDC (``settings.ndc``), or unchanged (the scene box)."""
    if settings.contraction != "none":
        return uncontract(x, settings.contraction, settings.scene_radius)
    if settings.ndc is not None:
        return ndc_to_world(x, *settings.ndc)
    return x


def _vertex_colors(field, verts: torch.Tensor, chunk: int = 1 << 16) -> np.ndarray:
    """RGBA uint8 ``[V, 4]``: the radiance at each vertex seen along its density gradient (from outside)."""
    dev = field.aabb.device
    out = []
    for s in range(0, verts.shape[0], chunk):
        x = verts[s : s + chunk].to(dev).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(field.density(x).sum(), x)
        d = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # into the surface
        d = torch.where(g.norm(dim=-1, keepdim=True) > 0, d, torch.tensor([0.0, 0.0, -1.0], device=dev))
        with torch.no_grad():
            rgb = field.color(x.detach(), d)
        out.append(rgb.cpu())
    rgb = torch.cat(out).clamp(0, 1).numpy() if out else np.zeros((0, 3))
    return np.concatenate([(rgb * 255).round(), np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
