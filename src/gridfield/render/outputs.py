"""Writing radiance-field outputs: RGB and depth images, turntable GIFs, and NeRF checkpoints."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gridfield import checkpoints
from gridfield.errors import InputError
from gridfield.render.occupancy import OccupancyGrid
from gridfield.render.pipeline import RenderSettings
from gridfield.render.spaces import CONTRACTIONS

CHECKPOINT_FORMAT = "gridfield.nerf/1"


def to_uint8(img: Tensor) -> np.ndarray:
    """``[H, W, 3]`` or ``[H, W]`` float in ``[0, 1]`` -> uint8 array (rounded, clipped)."""
    return (img.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def depth_image(depth: Tensor, opacity: Tensor, near: float, far: float) -> Tensor:
    """Depth ``[H, W]`` -> a ``[H, W, 3]`` picture: ``turbo`` colours from near (red) to far (blue),
    white where the opacity is below 0.5 (background)."""
    import matplotlib

    d = ((depth - near) / max(far - near, 1e-6)).clamp(0, 1).cpu().numpy()
    rgb = torch.from_numpy(matplotlib.colormaps["turbo_r"](d)[..., :3]).float()
    return torch.where((opacity.cpu() < 0.5)[..., None], torch.ones_like(rgb), rgb)


def save_png(path: str | Path, img: Tensor) -> None:
    """Save ``[H, W, 3]`` float image as PNG."""
    import imageio.v3 as iio

    iio.imwrite(Path(path), to_uint8(img))


def save_gif(path: str | Path, frames: list[Tensor], fps: int = 12) -> None:
    """Save ``[H, W, 3]`` float frames as a looping GIF."""
    import imageio.v3 as iio

    iio.imwrite(Path(path), np.stack([to_uint8(f) for f in frames]), duration=int(1000 / fps), loop=0)


def save_checkpoint(path: str | Path, field, occupancy, spec: dict, settings: dict, camera: dict,
                    train_poses: Tensor | None = None) -> None:
    """Save a trained radiance field, its occupancy grid, the ``spec`` that rebuilds the field (see
    :func:`gridfield.tasks.nerf.build_field_from_spec`), render ``settings`` and a ``camera``
    (intrinsics and the mean orbit of the training views) for rendering new paths.

    ``train_poses`` (the training cameras' OpenGL camera-to-world ``[N, 4, 4]``, optional) is stored in
    the camera as ``camera["train_c2w"]`` (``gridfield view`` draws them); checkpoints without it load too.
    """
    if train_poses is not None:
        camera = {**camera, "train_c2w": train_poses.detach().to("cpu", torch.float32).clone()}
    torch.save({"format": CHECKPOINT_FORMAT, "spec": spec, "settings": settings, "camera": camera,
                "state_dict": checkpoints.cpu_state(field),
                "occupancy": checkpoints.cpu_state(occupancy)}, Path(path))


#: The entries of a NeRF checkpoint and their types (checked by :func:`read_checkpoint`).
CHECKPOINT_KEYS = {"spec": dict, "settings": dict, "camera": dict, "state_dict": dict, "occupancy": dict}


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict; ``InputError`` when missing, not a gridfield NeRF checkpoint, or lacking
    one of :data:`CHECKPOINT_KEYS` (or holding one of the wrong type)."""
    ck = checkpoints.read_checkpoint(path, CHECKPOINT_FORMAT, "NeRF")
    checkpoints.require_keys(ck, path, CHECKPOINT_KEYS)
    return ck


def load_checkpoint(path: str | Path, build_field, device: str | torch.device = "cpu"):
    """Rebuild ``(field, occupancy, settings, camera)`` from a checkpoint, every part checked first.

    ``build_field(spec) -> RadianceField`` is the task's builder (e.g.
    :func:`gridfield.presets.build_spec`); the field and the occupancy grid go through
    :func:`gridfield.checkpoints.build_checked` (keys, shapes, finite weights, memory), ``settings``
    becomes a :class:`~gridfield.render.pipeline.RenderSettings` (unknown names are refused). Modules
    are in eval mode on ``device``. Every problem is one ``InputError`` naming the file.
    """
    ck = read_checkpoint(path)
    where = f"checkpoint {str(path)!r}"
    settings = _settings(ck["settings"], where, RenderSettings)  # the cheap checks first
    camera = ck["camera"]
    checkpoints.require_keys(camera, path, {"radius": (int, float), "elevation": (int, float)}, "its camera")
    if not (math.isfinite(camera["radius"]) and camera["radius"] > 0 and math.isfinite(camera["elevation"])):
        raise InputError(f"{where}: implausible camera orbit (radius {camera['radius']!r}, elevation "
                         f"{camera['elevation']!r}); the file is damaged")
    orbit = [camera.get("center", (0.0, 0.0, 0.0)), camera.get("azimuth", 0.0), camera.get("sweep", 360.0)]
    if not (isinstance(orbit[0], (list, tuple)) and len(orbit[0]) == 3 and all(_finite(v) for v in orbit[0])
            and _finite(orbit[1]) and _finite(orbit[2]) and 0 < orbit[2] <= 360):
        raise InputError(f"{where}: implausible camera orbit (center {orbit[0]!r}, azimuth {orbit[1]!r}, sweep "
                         f"{orbit[2]!r}; need 3 finite numbers, a finite azimuth and a sweep in (0, 360]); the "
                         "file is damaged")
    poses = camera.get("train_c2w")  # optional: checkpoints written before it was stored have none
    if poses is not None and not (isinstance(poses, torch.Tensor) and poses.ndim == 3 and poses.shape[1:] == (4, 4)
                                  and poses.is_floating_point() and bool(torch.isfinite(poses).all())):
        raise InputError(f"{where}: its training poses (camera 'train_c2w') are not finite [N, 4, 4] matrices; "
                         "the file is damaged")
    occ_state = ck["occupancy"]
    checkpoints.require_keys(occ_state, path, {"aabb": torch.Tensor, "ema": torch.Tensor}, "its occupancy grid")
    cells = occ_state["ema"].numel()
    res = round(cells ** (1 / 3)) if cells > 0 else 0
    aabb = occ_state["aabb"]
    if res < 1 or res**3 != cells:
        raise InputError(f"{where}: the occupancy grid has {cells} cells, not a cube R^3; the file is damaged")
    if aabb.shape != (6,) or not bool(torch.isfinite(aabb).all()) or not bool((aabb[3:] > aabb[:3]).all()):
        raise InputError(f"{where}: the occupancy box {aabb.tolist()} is not [xmin, ymin, zmin, xmax, ymax, zmax] "
                         "with min < max; the file is damaged")
    occ = checkpoints.build_checked(path, res, occ_state, lambda r: OccupancyGrid(aabb, resolution=r),
                                    device=device, what="the occupancy grid")
    field = checkpoints.build_checked(path, ck["spec"], ck["state_dict"], build_field, device=device,
                                      what="the radiance field")
    return field.to(device).eval(), occ.to(device), settings, camera


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _settings(stored: dict, where: str, cls):
    """``cls(**stored)`` (a RenderSettings) after checking names and values; ``InputError`` otherwise."""
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(stored) - known)
    if unknown:
        raise InputError(f"{where}: unknown render settings {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(sorted(known))}); the file is from another gridfield version")
    s = cls(**stored)

    names = ("near", "far", "step", "weight_threshold")
    problems = [f"{k}={getattr(s, k)!r}" for k in names if not _finite(getattr(s, k))]
    if not problems and not (0 <= s.near < s.far and s.step > 0 and s.weight_threshold >= 0):
        problems = [", ".join(f"{k}={getattr(s, k)!r}" for k in names)]
    bg = s.background
    if not (isinstance(bg, (list, tuple)) and len(bg) == 3 and all(_finite(c) for c in bg)):
        problems.append(f"background={bg!r}")
    if s.backend not in ("auto", "fast", "reference"):
        problems.append(f"backend={s.backend!r}")
    if s.contraction not in CONTRACTIONS or not (_finite(s.scene_radius) and s.scene_radius > 0):
        problems.append(f"contraction={s.contraction!r}, scene_radius={s.scene_radius!r}")
    ndc = s.ndc
    if ndc is not None and not (isinstance(ndc, (list, tuple)) and len(ndc) == 5
                                and all(_finite(v) and v > 0 for v in ndc)):
        problems.append(f"ndc={ndc!r}")
    if problems:
        raise InputError(f"{where}: implausible render settings ({'; '.join(problems)}); need 0 <= near < far, "
                         "step > 0, weight_threshold >= 0, 3 background numbers, backend auto, fast or "
                         f"reference, contraction {' or '.join(CONTRACTIONS)} with scene_radius > 0, and ndc "
                         "None or 5 positive numbers; the file is damaged")
    return dataclasses.replace(s, background=tuple(float(c) for c in bg),
                               ndc=None if ndc is None else tuple(float(v) for v in ndc))
