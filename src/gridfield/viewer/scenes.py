"""What a checkpoint holds, loaded for viewing: an image field, an SDF or a radiance field.

:func:`checkpoint_kind` reads only the file's ``format`` tag (memory-mapped, weights stay on disk);
:func:`load_scene` then goes through the task's own checked loader
(:func:`gridfield.tasks.image.load_checkpoint`, :func:`gridfield.tasks.sdf.load_sdf_checkpoint`,
:func:`gridfield.tasks.nerf.load_nerf`). Every problem is one :class:`~gridfield.errors.InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gridfield.errors import InputError, missing_extra, regular_file
from gridfield.render import outputs
from gridfield.render.rays import Intrinsics
from gridfield.tasks import image as image_task
from gridfield.tasks import sdf as sdf_task
from gridfield.tasks.nerf import load_nerf

#: Checkpoint ``format`` tag -> kind.
KINDS = {image_task.CHECKPOINT_FORMAT: "image", sdf_task.CHECKPOINT_FORMAT: "sdf", outputs.CHECKPOINT_FORMAT: "nerf"}


@dataclass
class ImageScene:
    """An image field and the ``shape [H, W, C]`` it was fitted to."""

    field: nn.Module
    shape: tuple[int, int, int]
    kind: str = "image"


@dataclass
class SDFScene:
    """An SDF field (unit frame) and the normalization back to the mesh's frame."""

    field: nn.Module
    normalization: Any
    kind: str = "sdf"


@dataclass
class NerfScene:
    """A radiance field with its occupancy grid, render settings, training intrinsics ``K``, orbit
    (``radius``, ``elevation`` about ``center``) and training poses ``train_c2w [N, 4, 4]`` (None in older
    checkpoints)."""

    field: nn.Module
    occupancy: Any
    settings: Any
    K: Intrinsics | None
    radius: float
    elevation: float
    train_c2w: torch.Tensor | None
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    kind: str = "nerf"


def checkpoint_kind(path: str | Path) -> str:
    """``"image"``, ``"sdf"`` or ``"nerf"`` from the checkpoint's ``format`` tag; ``InputError`` otherwise."""
    p = regular_file(path, "checkpoint")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"cannot read checkpoint {str(p)!r} ({type(e).__name__}); give a checkpoint.pt written "
                         "by gridfield image, sdf or nerf") from None
    fmt = ck.get("format") if isinstance(ck, dict) else None
    if fmt not in KINDS:
        raise InputError(f"{str(p)!r} is not a gridfield checkpoint (format {fmt!r}; known: "
                         f"{', '.join(sorted(KINDS))}); give a checkpoint.pt written by gridfield image, sdf or nerf")
    return KINDS[fmt]


def load_scene(path: str | Path, device: str | torch.device = "cpu") -> ImageScene | SDFScene | NerfScene:
    """Load any gridfield checkpoint for viewing (image and SDF fields on the CPU, NeRF on ``device``)."""
    kind = checkpoint_kind(path)
    if kind == "image":
        shape = tuple(image_task.read_checkpoint(path)["shape"])
        return ImageScene(image_task.load_checkpoint(path), shape)
    if kind == "sdf":
        try:
            import trimesh  # noqa: F401 - marching cubes and the normalization need the mesh extra
        except ImportError as e:
            raise missing_extra("trimesh", "mesh", "viewing an SDF checkpoint", e) from None
        field, norm = sdf_task.load_sdf_checkpoint(path)
        return SDFScene(field, norm)
    field, occ, settings, camera = load_nerf(path, device)
    try:
        K = Intrinsics(**camera["K"]) if isinstance(camera.get("K"), dict) else None
    except TypeError:
        raise InputError(f"checkpoint {str(path)!r}: its camera intrinsics {camera['K']!r} are not fx, fy, cx, cy, "
                         "width, height; the file is damaged") from None
    return NerfScene(field, occ, settings, K, float(camera["radius"]), float(camera["elevation"]),
                     camera.get("train_c2w"), tuple(float(v) for v in camera.get("center", (0.0, 0.0, 0.0))))
