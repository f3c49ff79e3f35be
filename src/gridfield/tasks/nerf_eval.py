"""NeRF evaluation and reuse: the standard test protocol, checkpoint reload, new camera paths.

:func:`evaluate` renders every test view (PSNR and SSIM averaged over views); :func:`load_nerf`
rebuilds a trained field from its checkpoint (checked before anything is built);
:func:`render_path` renders any cameras.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from gridfield import presets
from gridfield.data.blender import BlenderSplit
from gridfield.fields.radiance import RadianceField
from gridfield.metrics import psnr, ssim
from gridfield.render import outputs
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.pipeline import RenderSettings, render_camera
from gridfield.render.rays import Intrinsics

SSIM_KIND = "SSIM, 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, mean over pixels and RGB (Wang et al. 2004)"


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
    psnrs, ssims, seconds = [], [], 0.0
    for i in range(test.images.shape[0]):
        t0 = time.perf_counter()
        r = render_camera(field, test.c2w[i].to(field.aabb.device), test.camera(i), occ, field.aabb, settings)
        seconds += time.perf_counter() - t0
        pred, gt = r["rgb"].clamp(0, 1).cpu(), test.images[i]
        psnrs.append(psnr(pred, gt))
        ssims.append(float(ssim(pred, gt)) if min(gt.shape[:2]) >= 11 else float("nan"))
        if out is not None and (save is None or i < save):
            outputs.save_png(out / f"test_{i:03d}.png", pred)
            outputs.save_png(out / f"depth_{i:03d}.png",
                             outputs.depth_image(r["depth"], r["opacity"], test.near, test.far))
            outputs.save_png(out / f"error_{i:03d}.png", error_image(pred, gt))
    n_rays = test.images.shape[0] * test.K.width * test.K.height
    return {"psnr": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims), "psnr_per_view": psnrs,
            "ssim_per_view": ssims, "eval_seconds": seconds, "eval_rays_per_second": n_rays / max(seconds, 1e-9)}


def error_image(pred: torch.Tensor, gt: torch.Tensor, vmax: float = 0.25) -> torch.Tensor:
    """``[H, W, 3]`` colour map (inferno) of the mean absolute RGB error, saturating at ``vmax``."""
    from matplotlib import colormaps  # deferred: matplotlib is slow to import

    err = ((pred - gt).abs().mean(-1) / vmax).clamp(0, 1).numpy()
    return torch.from_numpy(colormaps["inferno"](err)[..., :3]).float()


def load_nerf(path: str | Path, device: str = "cpu") -> tuple[RadianceField, OccupancyGrid, RenderSettings, dict]:
    """Reload a checkpoint written by ``gridfield nerf``: ``(field, occupancy, settings, camera)`` (eval mode)."""
    return outputs.load_checkpoint(path, presets.build_spec, device)


def render_path(field: RadianceField, occ: OccupancyGrid, settings: RenderSettings, poses: torch.Tensor,
                K: Intrinsics) -> list[dict]:
    """Render cameras ``poses [N, 4, 4]`` (e.g. :func:`gridfield.render.paths.orbit_path`) with intrinsics ``K``."""
    dev = field.aabb.device
    return [render_camera(field, c.to(dev), K, occ, field.aabb, settings) for c in poses]
