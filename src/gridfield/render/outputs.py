"""Writing radiance-field outputs: RGB and depth images, turntable GIFs, and NeRF checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gridfield import checkpoints

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


def save_checkpoint(path: str | Path, field, occupancy, spec: dict, settings: dict, camera: dict) -> None:
    """Save a trained radiance field, its occupancy grid, the ``spec`` that rebuilds the field (see
    :func:`gridfield.tasks.nerf.build_field_from_spec`), render ``settings`` and a ``camera``
    (intrinsics and the mean orbit of the training views) for rendering new paths."""
    torch.save({"format": CHECKPOINT_FORMAT, "spec": spec, "settings": settings, "camera": camera,
                "state_dict": checkpoints.cpu_state(field),
                "occupancy": checkpoints.cpu_state(occupancy)}, Path(path))


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict; ``InputError`` when missing or not a gridfield NeRF checkpoint."""
    return checkpoints.read_checkpoint(path, CHECKPOINT_FORMAT, "NeRF")
