"""Loader for NeRF-synthetic / Blender-format scenes.

A scene folder holds ``transforms_{train,val,test}.json``: ``camera_angle_x`` (or ``fl_x``/``fl_y``/
``cx``/``cy``/``w``/``h``) and ``frames``, each with ``file_path`` (relative, usually without the
extension) and a camera-to-world ``transform_matrix`` (OpenGL convention, see
:mod:`gridfield.render.rays`). RGBA images are composited on ``background`` (white by default, the
standard protocol); ``downscale`` (an integer) averages ``downscale x downscale`` pixel blocks and
scales the intrinsics.

Example::

    split = load_blender("../shared/data/lego", "train", downscale=2)
    split.images.shape   # [100, 200, 200, 3] float32 in [0, 1]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gridfield.errors import InputError
from gridfield.render.rays import Intrinsics

EXTENSIONS = ("", ".png", ".jpg", ".jpeg", ".exr")


@dataclass
class BlenderSplit:
    """One split: ``images [N, H, W, 3]`` float32, ``c2w [N, 4, 4]`` float32, shared intrinsics ``K``,
    frame names, the ``near``/``far`` planes and the alpha channels ``alphas [N, H, W]`` (None when
    the images have no alpha)."""

    images: Tensor
    c2w: Tensor
    K: Intrinsics
    names: list[str]
    near: float = 2.0
    far: float = 6.0
    alphas: Tensor | None = None


def transforms_path(root: str | Path, split: str) -> Path:
    """``root / transforms_{split}.json``; ``InputError`` naming the file when it is missing."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"scene folder {root} does not exist")
    p = root / f"transforms_{split}.json"
    if not p.is_file():
        raise InputError(f"{p} not found (a Blender-format scene needs transforms_{split}.json)")
    return p


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{path}: expected an object with a non-empty 'frames' list")
    return meta


def _image_file(root: Path, file_path: str, where: str) -> Path:
    for ext in EXTENSIONS:
        p = root / (file_path + ext)
        if p.is_file():
            return p
    raise InputError(f"{where}: image {root / file_path}[.png] not found")


def _load_rgba(path: Path, background: tuple[float, float, float], where: str) -> tuple[np.ndarray, np.ndarray | None]:
    import imageio.v3 as iio

    try:
        plugin = "pillow" if path.suffix.lower() in (".png", ".jpg", ".jpeg") else None
        img = np.asarray(iio.imread(path, plugin=plugin))
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file
        raise InputError(f"{where}: cannot read image {path} ({e})") from None
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise InputError(f"{where}: image {path} has shape {img.shape}, expected H x W x 3 or 4")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0
    img = img.astype(np.float32) / scale
    if img.shape[-1] == 4:
        a = img[..., 3:]
        return img[..., :3] * a + np.asarray(background, np.float32) * (1 - a), a
    return img, None


def _intrinsics(meta: dict, width: int, height: int, where: str) -> Intrinsics:
    if "fl_x" in meta:
        fx = float(meta["fl_x"])
        fy = float(meta.get("fl_y", fx))
        cx, cy = float(meta.get("cx", width / 2)), float(meta.get("cy", height / 2))
        return Intrinsics(fx, fy, cx, cy, width, height)
    if "camera_angle_x" not in meta:
        raise InputError(f"{where}: needs 'camera_angle_x' or 'fl_x'")
    return Intrinsics.from_fov(width, height, float(meta["camera_angle_x"]))


def _pose(frame: dict, where: str) -> np.ndarray:
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where}: missing or non-numeric 'transform_matrix'") from None
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise InputError(f"{where}: 'transform_matrix' must be a finite 4x4 matrix, got shape {m.shape}")
    return m


def _downscale(img: np.ndarray, factor: int, where: str) -> np.ndarray:
    h, w, c = img.shape
    if h % factor or w % factor:
        raise InputError(f"{where}: image {w}x{h} is not divisible by downscale {factor}")
    return img.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def load_blender(root: str | Path, split: str = "train", downscale: int = 1,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0), max_frames: int | None = None,
                 near: float = 2.0, far: float = 6.0) -> BlenderSplit:
    """Load ``split`` of the scene at ``root`` (see the module docstring). Errors name the frame.

    ``max_frames`` keeps the first frames only (evenly spaced subsets are the caller's choice).
    """
    if downscale < 1 or int(downscale) != downscale:
        raise InputError(f"downscale must be a positive integer, got {downscale}")
    path = transforms_path(root, split)
    meta = _read_meta(path)
    frames = meta["frames"][:max_frames] if max_frames else meta["frames"]
    images, alphas, poses, names, full = [], [], [], [], None
    for i, frame in enumerate(frames):
        where = f"{path.name} frame {i}"
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise InputError(f"{where}: missing 'file_path'")
        where = f"{path.name} frame {i} ({frame['file_path']})"
        poses.append(_pose(frame, where))
        img, alpha = _load_rgba(_image_file(path.parent, frame["file_path"], where), background, where)
        full = img.shape if full is None else full
        if img.shape != full:
            raise InputError(f"{where}: image size {img.shape[:2]} differs from frame 0's {full[:2]}")
        images.append(_downscale(img, downscale, where) if downscale > 1 else img)
        if alpha is not None:
            alphas.append(_downscale(alpha, downscale, where) if downscale > 1 else alpha)
        names.append(frame["file_path"])
    h0, w0 = full[0], full[1]
    K = _intrinsics(meta, int(meta.get("w", w0)), int(meta.get("h", h0)), path.name)
    if (K.width, K.height) != (w0, h0):
        raise InputError(f"{path.name}: w/h {K.width}x{K.height} do not match the images ({w0}x{h0})")
    alpha_t = torch.from_numpy(np.stack(alphas)[..., 0]).float() if len(alphas) == len(images) else None
    return BlenderSplit(torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(poses)).float(),
                        K.scaled(downscale) if downscale > 1 else K, names, near, far, alpha_t)
