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
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gridfield import memory
from gridfield.data.images import read_pixels, to_unit_float
from gridfield.errors import InputError, regular_file
from gridfield.render.rays import FrameCameras, Intrinsics

EXTENSIONS = ("", ".png", ".jpg", ".jpeg", ".exr")


@dataclass
class BlenderSplit:
    """One split: ``images [N, H, W, 3]`` float32, ``c2w [N, 4, 4]`` float32, intrinsics ``K`` (every
    frame's, or the first frame's when ``Ks`` is given), frame names, the ``near``/``far`` planes, the alpha
    channels ``alphas [N, H, W]`` (None when the images have no alpha) and ``Ks``, one
    :class:`~gridfield.render.rays.Intrinsics` per frame when the frames' cameras differ (all ``W x H``;
    None: every frame has ``K``)."""

    images: Tensor
    c2w: Tensor
    K: Intrinsics
    names: list[str]
    near: float = 2.0
    far: float = 6.0
    alphas: Tensor | None = None
    Ks: list[Intrinsics] | None = None

    def camera(self, i: int) -> Intrinsics:
        """The intrinsics of frame ``i``."""
        return self.K if self.Ks is None else self.Ks[i]

    def cameras(self) -> Intrinsics | FrameCameras:
        """What :func:`~gridfield.render.rays.rays_from_pixels` takes for rays of any frame: ``K``, or the
        per-frame :class:`~gridfield.render.rays.FrameCameras`."""
        return self.K if self.Ks is None else FrameCameras.of(self.Ks)

    def subset(self, idx: list[int]) -> BlenderSplit:
        """The frames ``idx`` (in that order) as a split of their own."""
        idx = [int(i) for i in idx]
        return BlenderSplit(self.images[idx], self.c2w[idx], self.camera(idx[0]) if idx else self.K,
                            [self.names[i] for i in idx], self.near, self.far,
                            None if self.alphas is None else self.alphas[idx],
                            None if self.Ks is None else [self.Ks[i] for i in idx])


def transforms_path(root: str | Path, split: str) -> Path:
    """``root / transforms_{split}.json``; ``InputError`` naming the file when it is missing."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"scene folder {root} does not exist" if not root.exists() else
                         f"scene folder {root} is not a directory")
    p = root / f"transforms_{split}.json"
    if not p.exists():
        raise InputError(f"{p} not found (a Blender-format scene needs transforms_{split}.json)")
    return regular_file(p, "scene file")


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8 text
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: cannot read JSON ({why})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{path}: expected an object with a non-empty 'frames' list"
                         + ("" if not isinstance(meta, dict) or "frames" in meta else " (no 'frames' key)"))
    return meta


def _image_file(root: Path, file_path: str, where: str) -> Path:
    for ext in EXTENSIONS:
        p = root / (file_path + ext)
        if p.exists() and not p.is_dir():
            try:
                return regular_file(p, "image")
            except InputError as e:
                raise InputError(f"{where}: {e}") from None
    raise InputError(f"{where}: image {root / file_path}[.png] not found")


def _load_rgba(path: Path, background: tuple[float, float, float], where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB composited on ``background`` and the alpha (None without one), float32 in [0, 1]; the
    samples are read and scaled by :func:`gridfield.data.images.read_pixels` (every bit depth)."""
    try:
        raw, full_scale = read_pixels(path)
        img = to_unit_float(raw, str(path), full_scale)
    except InputError as e:
        text = str(e) if str(e).startswith("cannot read") else f"cannot read image: {e}"
        raise InputError(f"{where}: {text}") from None
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim == 3 and img.shape[-1] in (1, 2):  # gray (+ alpha)
        img = np.concatenate([img[..., :1]] * 3 + [img[..., 1:]], -1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise InputError(f"{where}: image {path} has shape {img.shape}, expected H x W x 3 or 4")
    if img.shape[-1] == 4:
        a = img[..., 3:]
        return img[..., :3] * a + np.asarray(background, np.float32) * (1 - a), a
    return img, None


#: Tolerance of the pose check: ``max |R^T R - I|`` and the last row's deviation from ``0 0 0 1``
#: (JSON poses of the NeRF-synthetic scenes are orthonormal to ~1e-6).
RIGID_TOLERANCE = 1e-3


def _number(meta: dict, key: str, where: str, what: str) -> float:
    """``meta[key]`` as a finite float; ``InputError`` naming the file and key otherwise."""
    v = meta[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{where}: {key!r} must be a finite number ({what}), got {v!r}")
    return float(v)


def _size(meta: dict, key: str, where: str) -> int | None:
    """``meta[key]`` (``w``/``h``) as a positive integer, None when absent."""
    if key not in meta:
        return None
    v = meta[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) or v < 1:
        raise InputError(f"{where}: {key!r} must be a positive whole number of pixels, got {v!r}")
    return int(v)


def check_intrinsics(meta: dict, where: str) -> None:
    """Validate the camera entries of a transforms file before any image is read.

    ``camera_angle_x`` (radians) must lie in ``(0, pi)``; ``fl_x``/``fl_y`` must be positive;
    ``cx``/``cy`` finite and inside the image when ``w``/``h`` are given; ``w``/``h`` positive whole
    numbers. One of ``camera_angle_x`` and ``fl_x`` is required. Messages name ``where`` and the key.
    """
    w, h = _size(meta, "w", where), _size(meta, "h", where)
    if "fl_x" in meta:
        for key in ("fl_x", "fl_y"):
            if key in meta and _number(meta, key, where, "a focal length in pixels") <= 0:
                raise InputError(f"{where}: {key!r} must be a positive focal length in pixels, got {meta[key]!r}")
        for key, size in (("cx", w), ("cy", h)):
            if key in meta:
                c = _number(meta, key, where, "a principal point in pixels")
                if size is not None and not 0 <= c <= size:
                    raise InputError(f"{where}: {key!r} = {meta[key]!r} lies outside the image (0 to {size} pixels)")
    elif "camera_angle_x" in meta:
        a = _number(meta, "camera_angle_x", where, "the horizontal field of view in radians")
        if not 0 < a < math.pi:
            raise InputError(f"{where}: 'camera_angle_x' must be the horizontal field of view in radians, "
                             f"between 0 and pi (180 degrees), got {meta['camera_angle_x']!r}")
    else:
        raise InputError(f"{where}: needs 'camera_angle_x' or 'fl_x'")


def _intrinsics(meta: dict, width: int, height: int, where: str) -> Intrinsics:
    check_intrinsics(meta, where)
    if "fl_x" in meta:
        fx = float(meta["fl_x"])
        fy = float(meta.get("fl_y", fx))
        cx, cy = float(meta.get("cx", width / 2)), float(meta.get("cy", height / 2))
        return Intrinsics(fx, fy, cx, cy, width, height)
    return Intrinsics.from_fov(width, height, float(meta["camera_angle_x"]))


def check_pose(m: np.ndarray, where: str, tol: float = RIGID_TOLERANCE) -> None:
    """Raise :class:`InputError` unless ``m`` ``[4, 4]`` is a rigid camera-to-world pose: rotation part
    orthonormal with determinant +1 (within ``tol``), last row ``0 0 0 1``."""
    rot = m[:3, :3]
    err = float(np.abs(rot.T @ rot - np.eye(3)).max())
    if err > tol:
        raise InputError(f"{where}: 'transform_matrix' is not a rigid camera-to-world pose: its rotation part "
                         f"is not orthonormal (max |R^T R - I| = {err:.3g}, tolerance {tol:g}); expected "
                         "[[R, t], [0, 0, 0, 1]] with R a rotation")
    if np.linalg.det(rot) < 0:
        raise InputError(f"{where}: 'transform_matrix' is a reflection (its rotation part has determinant -1), "
                         "not a camera pose; expected [[R, t], [0, 0, 0, 1]] with R a rotation")
    if np.abs(m[3] - np.array([0.0, 0.0, 0.0, 1.0])).max() > tol:
        raise InputError(f"{where}: 'transform_matrix' last row is {m[3].tolist()}, expected [0, 0, 0, 1]")


def _pose(frame: dict, where: str) -> np.ndarray:
    if "transform_matrix" not in frame:
        raise InputError(f"{where}: missing 'transform_matrix'")
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: 'transform_matrix' must be a 4x4 list of numbers") from None
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise InputError(f"{where}: 'transform_matrix' must be a finite 4x4 matrix, got shape {m.shape}"
                         + ("" if m.shape != (4, 4) else " with NaN or infinite entries"))
    check_pose(m, where)
    return m


def _downscale(img: np.ndarray, factor: int, where: str) -> np.ndarray:
    h, w, c = img.shape
    if h % factor or w % factor:
        raise InputError(f"{where}: image {w}x{h} is not divisible by downscale {factor}")
    return img.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def check_downscale(downscale) -> None:
    """``InputError`` unless ``downscale`` is a positive integer (an integral float counts)."""
    if isinstance(downscale, bool) or not isinstance(downscale, (int, float)) or not downscale >= 1 \
            or int(downscale) != downscale:
        raise InputError(f"downscale must be a positive integer, got {downscale!r}")


def load_blender(root: str | Path, split: str = "train", downscale: int = 1,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0), max_frames: int | None = None,
                 near: float = 2.0, far: float = 6.0) -> BlenderSplit:
    """Load ``split`` of the scene at ``root`` (see the module docstring). Errors name the frame.

    ``max_frames`` keeps the first frames only (evenly spaced subsets are the caller's choice).
    """
    check_downscale(downscale)
    if not (math.isfinite(near) and math.isfinite(far) and 0 <= near < far):
        raise InputError(f"need finite near/far planes with 0 <= near < far, got near {near!r}, far {far!r}")
    downscale = int(downscale)
    path = transforms_path(root, split)
    meta = _read_meta(path)
    check_intrinsics(meta, str(path))
    frames = meta["frames"][:max_frames] if max_frames else meta["frames"]
    poses = []
    for i, frame in enumerate(frames):  # every pose is checked before any image is decoded
        where = f"{path} frame {i}"
        if not isinstance(frame, dict) or "file_path" not in frame:
            raise InputError(f"{where}: missing 'file_path'")
        if not isinstance(frame["file_path"], str) or not frame["file_path"].strip():
            raise InputError(f"{where}: 'file_path' must be a non-empty string, got {frame['file_path']!r}")
        poses.append(_pose(frame, f"{where} ({frame['file_path']})"))
    images, alphas, names, full = [], [], [], None
    for i, frame in enumerate(frames):
        where = f"{path} frame {i} ({frame['file_path']})"
        img, alpha = _load_rgba(_image_file(path.parent, frame["file_path"], where), background, where)
        if full is None:  # all frames as float32 RGB + alpha, in the list and stacked
            full = img.shape
            memory.guard(len(frames) * full[0] * full[1] * 4 * 4 * 2, f"the images ({len(frames)} frames of "
                         f"{full[1]} x {full[0]})", f"scene {str(path)!r}", "load fewer frames (max_frames)")
        if img.shape != full:
            raise InputError(f"{where}: image size {img.shape[:2]} differs from frame 0's {full[:2]}")
        images.append(_downscale(img, downscale, where) if downscale > 1 else img)
        if alpha is not None:
            alphas.append(_downscale(alpha, downscale, where) if downscale > 1 else alpha)
        names.append(frame["file_path"])
    h0, w0 = full[0], full[1]
    K = _intrinsics(meta, _size(meta, "w", str(path)) or w0, _size(meta, "h", str(path)) or h0, str(path))
    if (K.width, K.height) != (w0, h0):
        raise InputError(f"{path}: w/h {K.width}x{K.height} do not match the images ({w0}x{h0})")
    alpha_t = torch.from_numpy(np.stack(alphas)[..., 0]).float() if len(alphas) == len(images) else None
    return BlenderSplit(torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(poses)).float(),
                        K.scaled(downscale) if downscale > 1 else K, names, near, far, alpha_t)
