"""Real captures in the standard dataset formats, read into train and test :class:`BlenderSplit` s.

``load_scene(root, format="auto")`` detects the format from the files in ``root``:

* ``blender``: ``transforms_{train,test}.json`` (NeRF-synthetic, :mod:`gridfield.data.blender`); its
  own train/test split, near 2, far 6, no re-orientation.
* ``transforms``: Instant-NGP / nerfstudio ``transforms.json``: intrinsics at the top level or per frame
  (``fl_x, fl_y, cx, cy, w, h`` or ``camera_angle_x/y``), OpenCV distortion ``k1 k2 p1 p2 k3`` (or
  ``camera_model: OPENCV_FISHEYE`` with ``k1..k4``), ``file_path`` with its extension, camera-to-world
  ``transform_matrix`` in the OpenGL convention, optional ``mask_path`` (the alpha), ``aabb_scale``
  (recorded). Frames whose image is missing are skipped and reported (how many, the first names), or
  refused with ``missing="error"``.
* ``llff``: ``poses_bounds.npy`` (``[N, 17]``: a 3x5 matrix per image, ``[R | t | (h, w, f)]`` with
  LLFF's axes down, right, back, then the near and far depth bounds) and the images in ``images_D``
  (``D`` = ``downscale``, LLFF's own downsampled folders) or ``images`` (averaged here).
* ``colmap``: a COLMAP sparse model (``sparse/0`` or ``sparse``, ``cameras`` and ``images`` as .bin or
  .txt) read with pycolmap; cameras SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV,
  OPENCV_FISHEYE; images in ``images`` (or ``images_D``).

Splits: ``blender`` keeps its files' split. The other formats hold out every ``test_every``-th frame
(default 8, in the order of the file, or of the image names for COLMAP, whose ids are arbitrary): frames
``0, 8, 16, ...`` are the test set (the LLFF / Mip-NeRF 360 protocol).

Scenes without a box (every format but ``blender``) are re-oriented and scaled as nerfstudio does: the
mean camera position moves to the origin, the mean camera up vector turns to ``+Z``, and the scene is
scaled so that the largest camera coordinate is 1 (the cameras fill the cube ``[-1, 1]^3``). For NDC
(``ndc=True``, forward-facing scenes) they are re-centred as LLFF does instead (:func:`recenter_poses`):
the mean camera becomes the identity (looking down ``-z``) and the scene is scaled so that the nearest
depth bound is at ``1 / 0.75`` (the NDC near plane is ``z = -1``).
``SceneInfo.world_from_scene`` maps the result back to the file's frame.
Frames may have cameras of their own (intrinsics and distortion: per-frame keys of ``transforms.json``, the
``(h, w, f)`` of each LLFF row, several COLMAP cameras): the splits then carry one per frame
(``BlenderSplit.Ks``). They must share one image size and one lens model (fisheye or not); NDC uses the
first frame's intrinsics for its projection (any world ray maps into it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from gridfield import memory
from gridfield.data.blender import (
    BlenderSplit,
    _downscale,
    _load_rgba,
    _number,
    _pose,
    _size,
    check_downscale,
    check_pose,
    load_blender,
)
from gridfield.errors import InputError, regular_file
from gridfield.render.rays import Intrinsics

FORMATS = ("blender", "transforms", "llff", "colmap")
TEST_EVERY = 8
#: near plane of the re-oriented scenes (the cameras fill the cube [-1, 1]^3)
CAPTURE_NEAR = 0.05
#: LLFF's NDC set-up: depth bounds scaled so that the nearest is at 1 / 0.75; NDC near plane z = -1
NDC_BD_FACTOR, NDC_NEAR = 0.75, 1.0
#: the far end of NDC rays (unit directions; the box [-1.5, 1.5]^2 x [-1, 1] ends them earlier)
NDC_FAR = 4.0


@dataclass
class SceneInfo:
    """What a loader found besides the images: the ``format``, the ``world_from_scene`` transform ``[4, 4]``
    (a similarity: scale times rotation, and a translation) from the normalised frame back to the file's,
    the frames skipped for a missing image, and format details (``aabb_scale``, LLFF bounds)."""

    format: str
    world_from_scene: np.ndarray = field(default_factory=lambda: np.eye(4))
    skipped: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def detect_format(root: str | Path) -> str:
    """The format of the scene folder ``root`` (see the module docstring); ``InputError`` otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"scene folder {root} does not exist" if not root.exists() else
                         f"scene folder {root} is not a directory")
    if (root / "transforms_train.json").exists():
        return "blender"
    if (root / "transforms.json").exists():
        return "transforms"
    if (root / "poses_bounds.npy").exists():
        return "llff"
    if _colmap_dir(root) is not None:
        return "colmap"
    raise InputError(f"{root}: no scene found: looked for transforms_train.json (Blender), transforms.json "
                     "(Instant-NGP / nerfstudio), poses_bounds.npy (LLFF) and sparse/0 or sparse with "
                     "cameras.bin/.txt (COLMAP)")


def load_scene(root: str | Path, format: str = "auto", downscale: int = 1,
               background: tuple[float, float, float] = (1.0, 1.0, 1.0), missing: str = "skip",
               test_every: int = TEST_EVERY, ndc: bool = False) -> tuple[BlenderSplit, BlenderSplit, SceneInfo]:
    """``(train, test, info)`` of the scene at ``root`` in ``format`` (``auto``: :func:`detect_format`).

    ``ndc``: re-centre a forward-facing capture for NDC rendering (:func:`recenter_poses`; the splits'
    ``near``/``far`` are then NDC ray parameters, ``info.extra["ndc"]`` the ``(fx, fy, cx, cy, near)`` of
    :class:`~gridfield.render.pipeline.RenderSettings`); refused for ``blender`` scenes and for cameras
    that do not all face the mean camera's way."""
    if format not in ("auto", *FORMATS):
        raise InputError(f"unknown scene format {format!r}; choose auto, {', '.join(FORMATS)}")
    if missing not in ("skip", "error"):
        raise InputError(f"missing must be 'skip' or 'error', got {missing!r}")
    if isinstance(test_every, bool) or not isinstance(test_every, int) or test_every < 2:
        raise InputError(f"test_every must be a whole number >= 2, got {test_every!r}")
    fmt = detect_format(root) if format == "auto" else format
    if fmt == "blender" and ndc:
        raise InputError(f"{root}: NDC is for forward-facing captures (LLFF, transforms.json, COLMAP), not Blender "
                         "scenes; use the scene box")
    if fmt == "blender":
        return (load_blender(root, "train", downscale, background), load_blender(root, "test", downscale, background),
                SceneInfo("blender"))
    check_downscale(downscale)
    if fmt == "transforms":
        images, alphas, c2w, Ks, names, info = _read_transforms(Path(root), downscale, background, missing)
    elif fmt == "llff":
        images, alphas, c2w, Ks, names, info = _read_llff(Path(root), downscale)
    else:
        images, alphas, c2w, Ks, names, info = _read_colmap(Path(root), downscale)
    if len({k.fisheye for k in Ks}) > 1:
        raise InputError(f"{root}: some cameras are fisheye and some are not; one lens model per capture is "
                         "supported")
    K = Ks[0]
    if len(names) < 2:
        raise InputError(f"{root}: {len(names)} usable frame(s); need at least 2 (one to train, one to test)")
    near, far = CAPTURE_NEAR, 2 * math.sqrt(3) * 8
    if ndc:
        if "near_bound" not in info.extra:
            raise InputError(f"{root}: NDC needs the scene's depth bounds, which only LLFF's poses_bounds.npy "
                             "stores; use --scene-space contract or box")
        c2w, world_from_scene = recenter_poses(c2w, info.extra["near_bound"], str(root))
        info.extra["ndc"] = (K.fx, K.fy, K.cx, K.cy, NDC_NEAR)
        near, far = 0.0, NDC_FAR
    else:
        c2w, world_from_scene = normalize_poses(c2w)
    info.world_from_scene = world_from_scene
    if fmt == "llff" and not ndc:  # forward-facing: the content lies up to the far bound in front of the cameras
        scale = 1.0 / float(np.linalg.norm(world_from_scene[:3, 0]))
        info.extra["scene_radius"] = 1.0 + info.extra["far_bound"] * scale
    test_idx = list(range(0, len(names), test_every))
    train_idx = [i for i in range(len(names)) if i % test_every]

    def split(idx: list[int]) -> BlenderSplit:
        a = None if alphas is None else torch.from_numpy(np.stack([alphas[i] for i in idx])).float()
        ks = [Ks[i] for i in idx]
        return BlenderSplit(torch.from_numpy(np.stack([images[i] for i in idx])).float(),
                            torch.from_numpy(c2w[idx]).float(), ks[0], [names[i] for i in idx], near, far, a,
                            None if all(k == ks[0] for k in ks) else ks)

    return split(train_idx), split(test_idx), info


# -- pose normalisation -------------------------------------------------------------------------------
def normalize_poses(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-centre, re-orient and scale camera-to-world poses ``[N, 4, 4]`` (OpenGL) as nerfstudio does
    (``orientation_method="up"``, ``center_method="poses"``, auto scale to a largest camera coordinate
    of 1): returns the new poses and
    ``world_from_scene`` ``[4, 4]`` (new -> original frame)."""
    c2w = np.asarray(c2w, np.float64)
    center = c2w[:, :3, 3].mean(0)
    up = c2w[:, :3, 1].mean(0)  # OpenGL: +Y is the camera's up
    n = np.linalg.norm(up)
    up = up / n if n > 1e-8 else np.array([0.0, 0.0, 1.0])
    rot = _rotation_to_z(up)  # scene_from_world rotation
    moved = c2w.copy()
    moved[:, :3, :3] = rot @ c2w[:, :3, :3]
    moved[:, :3, 3] = (c2w[:, :3, 3] - center) @ rot.T
    radius = float(np.abs(moved[:, :3, 3]).max())
    scale = 1.0 / radius if radius > 1e-8 else 1.0
    moved[:, :3, 3] *= scale
    world_from_scene = np.eye(4)
    world_from_scene[:3, :3] = rot.T / scale
    world_from_scene[:3, 3] = center
    return moved, world_from_scene


def recenter_poses(c2w: np.ndarray, near_bound: float, where: str) -> tuple[np.ndarray, np.ndarray]:
    """LLFF's ``recenter_poses`` with its ``bd_factor`` of 0.75: poses ``[N, 4, 4]`` (OpenGL) moved into the
    frame of the mean camera (mean position; back axis the normalised sum of the back axes; up from the
    sum of the up axes) and scaled by ``1 / (0.75 near_bound)``; returns the poses and ``world_from_scene``.
    ``InputError`` when a camera looks away from the mean camera's direction (not forward-facing)."""
    c2w = np.asarray(c2w, np.float64)
    center = c2w[:, :3, 3].mean(0)
    back = c2w[:, :3, 2].sum(0)
    back /= max(np.linalg.norm(back), 1e-12)
    up = c2w[:, :3, 1].sum(0)
    right = np.cross(up, back)
    if np.linalg.norm(right) < 1e-8:
        raise InputError(f"{where}: the cameras' mean up and viewing axes are parallel; cannot set up NDC")
    right /= np.linalg.norm(right)
    rot = np.stack([right, np.cross(back, right), back], 1)  # world_from_mean-camera rotation
    facing = c2w[:, :3, 2] @ back
    if (facing <= 0).any():
        bad = int(np.nonzero(facing <= 0)[0][0])
        raise InputError(f"{where}: camera {bad} looks away from the mean viewing direction; NDC needs a "
                         "forward-facing capture (use --scene-space contract)")
    scale = 1.0 / (NDC_BD_FACTOR * near_bound)
    moved = c2w.copy()
    moved[:, :3, :3] = rot.T @ c2w[:, :3, :3]
    moved[:, :3, 3] = (c2w[:, :3, 3] - center) @ rot * scale
    world_from_scene = np.eye(4)
    world_from_scene[:3, :3] = rot / scale
    world_from_scene[:3, 3] = center
    return moved, world_from_scene


def _rotation_to_z(v: np.ndarray) -> np.ndarray:
    """The rotation ``[3, 3]`` taking the unit vector ``v`` to ``+Z`` (Rodrigues)."""
    z = np.array([0.0, 0.0, 1.0])
    c = float(v @ z)
    if c < -1 + 1e-10:
        return np.diag([1.0, -1.0, -1.0])
    k = np.cross(v, z)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + kx + kx @ kx / (1 + c)


# -- Instant-NGP / nerfstudio transforms.json ---------------------------------------------------------
CAMERA_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y", "k1", "k2", "k3", "k4",
               "p1", "p2", "camera_model")


def _camera_from_meta(meta: dict, where: str, width: int, height: int) -> Intrinsics:
    """Intrinsics and distortion from one transforms.json camera (top level merged with a frame's keys)."""
    model = meta.get("camera_model", "OPENCV")
    if model not in ("OPENCV", "PINHOLE", "OPENCV_FISHEYE", "SIMPLE_PINHOLE"):
        raise InputError(f"{where}: camera_model {model!r} is not supported (OPENCV, OPENCV_FISHEYE, PINHOLE)")
    if "fl_x" in meta or "fl_y" in meta:
        fx = _number(meta, "fl_x" if "fl_x" in meta else "fl_y", where, "a focal length in pixels")
        fy = _number(meta, "fl_y", where, "a focal length in pixels") if "fl_y" in meta else fx
    elif "camera_angle_x" in meta or "camera_angle_y" in meta:
        key = "camera_angle_x" if "camera_angle_x" in meta else "camera_angle_y"
        a = _number(meta, key, where, "a field of view in radians")
        if not 0 < a < math.pi:
            raise InputError(f"{where}: {key!r} must be a field of view in radians between 0 and pi, got {a!r}")
        fx = fy = 0.5 * (width if key.endswith("x") else height) / math.tan(0.5 * a)
    else:
        raise InputError(f"{where}: needs a focal length ('fl_x' / 'fl_y' or 'camera_angle_x')")
    for key, f in (("fl_x", fx), ("fl_y", fy)):
        if not f > 0:
            raise InputError(f"{where}: {key!r} must be a positive focal length in pixels, got {f!r}")
    cx = _number(meta, "cx", where, "a principal point in pixels") if "cx" in meta else width / 2
    cy = _number(meta, "cy", where, "a principal point in pixels") if "cy" in meta else height / 2
    dist = {k: _number(meta, k, where, "a distortion coefficient") if k in meta else 0.0
            for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
    fisheye = model == "OPENCV_FISHEYE"
    if fisheye and (dist["p1"] or dist["p2"]):
        raise InputError(f"{where}: an OPENCV_FISHEYE camera has no tangential terms p1/p2")
    return Intrinsics(fx, fy, cx, cy, width, height, fisheye=fisheye, **dist)


def _image_size(meta: dict, where: str) -> tuple[int, int] | None:
    """``(w, h)`` of a camera (both required once either is given), None without them."""
    if "w" not in meta and "h" not in meta:
        return None
    for key in ("w", "h"):
        if key not in meta:
            raise InputError(f"{where}: {key!r} must be a positive whole number of pixels, got None")
    return _size(meta, "w", where), _size(meta, "h", where)


def _read_transforms(root: Path, downscale: int, background, missing: str):
    path = regular_file(root / "transforms.json", "scene file")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: cannot read JSON ({why})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{path}: expected an object with a non-empty 'frames' list")
    top = {k: meta[k] for k in CAMERA_KEYS if k in meta}
    frames, skipped = [], []
    for i, fr in enumerate(meta["frames"]):  # every pose and camera is checked before any image is decoded
        where = f"{path} frame {i}"
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str) or not fr["file_path"].strip():
            raise InputError(f"{where}: missing 'file_path' (a non-empty string)")
        where = f"{where} ({fr['file_path']})"
        m = _pose(fr, where)
        img = (path.parent / fr["file_path"])
        if not img.is_file():
            if missing == "error":
                raise InputError(f"{where}: image {img} not found")
            skipped.append(fr["file_path"])
            continue
        cam = top | {k: fr[k] for k in CAMERA_KEYS if k in fr}
        frames.append((fr, m, img, cam, where))
    if skipped:
        first = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        print(f"note: {path}: {len(skipped)} of {len(meta['frames'])} frames have no image and are skipped "
              f"({first}); pass --missing-images error to refuse them")
    if not frames:
        raise InputError(f"{path}: none of the {len(meta['frames'])} frames has an image")
    images, alphas, names, Ks, poses = [], [], [], [], []
    for fr, m, img_path, cam, where in frames:
        img, alpha = _load_rgba(img_path, background, where)
        if "mask_path" in fr:
            mask, _ = _load_rgba(regular_file(path.parent / fr["mask_path"], "mask"), (0.0, 0.0, 0.0), where)
            alpha = (mask[..., :1] > 0.5).astype(np.float32)
            img = img * alpha + np.asarray(background, np.float32) * (1 - alpha)
        h, w = img.shape[:2]
        size = _image_size(cam, where)
        if size is not None and size != (w, h):
            raise InputError(f"{where}: w/h {size[0]}x{size[1]} do not match the image ({w}x{h})")
        k = _camera_from_meta(cam, where, w, h)
        if not Ks:
            memory.guard(len(frames) * h * w * 4 * 4 * 2, f"the images ({len(frames)} frames of {w} x {h})",
                         f"scene {str(path)!r}", "pass a larger --downscale")
        elif (k.width, k.height) != (Ks[0].width, Ks[0].height):
            raise InputError(f"{where}: its image is {k.width}x{k.height}, the first frame's {Ks[0].width}x"
                             f"{Ks[0].height}; frames of one capture must share one image size")
        Ks.append(k)
        images.append(_downscale(img, downscale, where) if downscale > 1 else img)
        if alpha is not None:
            alphas.append((_downscale(alpha, downscale, where) if downscale > 1 else alpha)[..., 0])
        names.append(fr["file_path"])
        poses.append(m)
    info = SceneInfo("transforms", skipped=skipped, extra={"aabb_scale": meta.get("aabb_scale")})
    return (images, alphas if len(alphas) == len(images) else None, np.stack(poses),
            [k.scaled(downscale) for k in Ks] if downscale > 1 else Ks, names, info)


# -- LLFF ---------------------------------------------------------------------------------------------
def _image_folder(root: Path, downscale: int) -> tuple[Path, int]:
    """``(folder, remaining downscale)``: ``images_D`` when it exists (LLFF / Mip-NeRF 360), else ``images``."""
    if downscale > 1 and (root / f"images_{downscale}").is_dir():
        return root / f"images_{downscale}", 1
    if (root / "images").is_dir():
        return root / "images", downscale
    raise InputError(f"{root}: no image folder (looked for images_{downscale}/ and images/)")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG")


def _read_images(paths: list[Path], downscale: int, where: str):
    images, full = [], None
    for p in paths:
        img, _ = _load_rgba(regular_file(p, "image"), (1.0, 1.0, 1.0), f"{where} ({p.name})")
        if full is None:
            full = img.shape
            memory.guard(len(paths) * full[0] * full[1] * 4 * 4 * 2, f"the images ({len(paths)} of "
                         f"{full[1]} x {full[0]})", where, "pass a larger --downscale")
        if img.shape != full:
            raise InputError(f"{where}: image {p.name} is {img.shape[1]}x{img.shape[0]}, the first one "
                             f"{full[1]}x{full[0]}: one camera needs one image size")
        images.append(_downscale(img, downscale, f"{where} ({p.name})") if downscale > 1 else img)
    return images


def _read_llff(root: Path, downscale: int):
    path = regular_file(root / "poses_bounds.npy", "scene file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: cannot read ({why})") from None
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] < 1:
        raise InputError(f"{path}: expected an [N, 17] array (3x5 pose and 2 bounds per image), got {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int(np.nonzero(~np.isfinite(arr).all(1))[0][0])
        raise InputError(f"{path}: row {bad} has NaN or infinite values")
    folder, rest = _image_folder(root, downscale)
    files = sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES and p.is_file())
    if len(files) != arr.shape[0]:
        raise InputError(f"{path}: {arr.shape[0]} poses but {len(files)} images in {folder}")
    mats, bounds = arr[:, :15].reshape(-1, 3, 5), arr[:, 15:]
    if (bounds <= 0).any() or (bounds[:, 0] >= bounds[:, 1]).any():
        raise InputError(f"{path}: the near/far bounds must be positive with near < far")
    hwf = mats[:, :, 4]
    bad = np.nonzero(~(hwf > 0).all(1))[0]
    if bad.size:
        h, w, f = hwf[bad[0]]
        raise InputError(f"{path}: row {bad[0]}: height, width and focal length must be positive, got {h}, {w}, {f}")
    images = _read_images(files, rest, str(path))
    ih, iw = images[0].shape[:2]
    c2w = np.tile(np.eye(4), (arr.shape[0], 1, 1))
    # LLFF columns are (down, right, back); OpenGL wants (right, up, back)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2] = mats[:, :, 1], -mats[:, :, 0], mats[:, :, 2]
    c2w[:, :3, 3] = mats[:, :, 3]
    for i in range(c2w.shape[0]):
        check_pose(c2w[i], f"{path} row {i} ({files[i].name})")
    focals = hwf[:, 2] * iw / hwf[:, 1]  # LLFF's focal is for its full-size width w
    Ks = [Intrinsics(float(f), float(f), iw / 2, ih / 2, iw, ih) for f in focals]
    info = SceneInfo("llff", extra={"near_bound": float(bounds.min()), "far_bound": float(bounds.max())})
    return images, None, c2w, Ks, [p.name for p in files], info


# -- COLMAP -------------------------------------------------------------------------------------------
def _colmap_dir(root: Path) -> Path | None:
    for d in (root / "sparse" / "0", root / "sparse"):
        if any((d / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return d
    return None


def _colmap_camera(cam, where: str) -> Intrinsics:
    name = cam.model_name if hasattr(cam, "model_name") else str(cam.model).split(".")[-1]
    p = [float(v) for v in cam.params]
    w, h = int(cam.width), int(cam.height)
    if name == "SIMPLE_PINHOLE":
        K = Intrinsics(p[0], p[0], p[1], p[2], w, h)
    elif name == "PINHOLE":
        K = Intrinsics(p[0], p[1], p[2], p[3], w, h)
    elif name == "SIMPLE_RADIAL":
        K = Intrinsics(p[0], p[0], p[1], p[2], w, h, k1=p[3])
    elif name == "RADIAL":
        K = Intrinsics(p[0], p[0], p[1], p[2], w, h, k1=p[3], k2=p[4])
    elif name == "OPENCV":
        K = Intrinsics(p[0], p[1], p[2], p[3], w, h, k1=p[4], k2=p[5], p1=p[6], p2=p[7])
    elif name == "OPENCV_FISHEYE":
        K = Intrinsics(p[0], p[1], p[2], p[3], w, h, k1=p[4], k2=p[5], k3=p[6], k4=p[7], fisheye=True)
    else:
        raise InputError(f"{where}: camera model {name} is not supported (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, "
                         "RADIAL, OPENCV, OPENCV_FISHEYE)")
    if not (K.fx > 0 and K.fy > 0 and all(math.isfinite(v) for v in p)):
        raise InputError(f"{where}: camera {name} needs positive, finite focal lengths, got params {p}")
    return K


def _read_colmap(root: Path, downscale: int):
    try:
        import pycolmap  # deferred: the optional colmap extra
    except ImportError:
        raise InputError("reading a COLMAP model needs pycolmap: pip install 'gridfield[colmap]'") from None
    model = _colmap_dir(root)
    try:
        rec = pycolmap.Reconstruction(str(model))
    except Exception as e:  # pycolmap raises plain RuntimeError / ValueError for unreadable models
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{model}: cannot read the COLMAP model ({why})") from None
    where = str(model)
    imgs = sorted((im for im in rec.images.values() if getattr(im, "has_pose", True)), key=lambda im: im.name)
    if not imgs:
        raise InputError(f"{model}: the model has no registered images")
    used = sorted({im.camera_id for im in imgs})
    cams = {cid: _colmap_camera(rec.cameras[cid], f"{where} camera {cid}") for cid in used}
    folder, rest = _image_folder(root, downscale)
    paths = [folder / im.name for im in imgs]
    for p, im in zip(paths, imgs):
        if not p.is_file():
            raise InputError(f"{where}: image {im.name} (id {im.image_id}) not found in {folder}")
    c2w = []
    for im in imgs:
        pose = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        m = np.eye(4)
        m[:3] = np.asarray(pose.matrix(), np.float64)
        if not np.isfinite(m).all():
            raise InputError(f"{where}: image {im.name} has a non-finite pose")
        cw = np.linalg.inv(m)
        cw[:3, 1:3] *= -1  # OpenCV camera axes (x right, y down, z forward) -> OpenGL (y up, z back)
        c2w.append(cw)
    images = _read_images(paths, rest, where)
    ih, iw = images[0].shape[:2]
    Ks = {}
    for cid, K in cams.items():
        if folder.name != "images" or rest > 1:  # images of a downscaled folder or averaged here
            Ks[cid] = replace(K.scaled(K.width / iw), width=iw, height=ih)
        elif (iw, ih) != (K.width, K.height):
            raise InputError(f"{where}: the images are {iw}x{ih}, camera {cid} {K.width}x{K.height}")
        else:
            Ks[cid] = K
    info = SceneInfo("colmap", extra={"points3D": int(rec.num_points3D())})
    return images, None, np.stack(c2w), [Ks[im.camera_id] for im in imgs], [im.name for im in imgs], info
