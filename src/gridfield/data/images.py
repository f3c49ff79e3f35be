"""Images for the 2D fitting task: loading files or built-in samples, and pixel-centre coordinates.

``load_image`` returns ``[H, W, C]`` float32 in ``[0, 1]`` (``C`` = 1 gray, 3 RGB, 4 RGBA with the
alpha kept as a channel); bad input raises :class:`gridfield.errors.InputError` with a one-line
message. ``pixel_coords`` maps pixel centres to ``[-1, 1]^2`` with the first and last centres on the
border, so a dense grid with ``R = W`` nodes per axis can represent the image exactly.

Example::

    img = load_image("astronaut", max_size=256)   # [256, 256, 3]
    x = pixel_coords(*img.shape[:2])              # [65536, 2], row-major, x = column, y = row
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gridfield.errors import InputError

#: Built-in names -> files shipped inside the scikit-image wheel (``skimage/data``). Only bundled
#: files are offered: images that scikit-image downloads at run time are deliberately left out.
BUILTIN_IMAGES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "colorwheel": "color.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "logo": "logo.png",
    "microaneurysms": "microaneurysms.png",
    "moon": "moon.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}
DEFAULT_IMAGE = "astronaut"
MIN_SIZE = 8


def builtin_path(name: str) -> Path:
    """Local path of built-in image ``name`` (inside the installed scikit-image package)."""
    import skimage.data

    return Path(os.path.dirname(skimage.data.__file__)) / BUILTIN_IMAGES[name]


def load_image(path_or_builtin: str, max_size: int | None = None) -> Tensor:
    """Load an image file (PNG/JPEG/TIFF/EXR, ...) or a built-in name as ``[H, W, C]`` float32 in [0, 1].

    ``max_size``: if given, downscale (anti-aliased) so that ``max(H, W) <= max_size``.
    Integer images are divided by their type's maximum; float images (e.g. EXR) are clipped to
    ``[0, 1]`` with a warning when out of range; gray+alpha becomes RGBA. Only the first frame of a
    multi-frame file is used. Raises ``InputError`` for missing, unreadable, empty, too small
    (< 8 px per side) or non-finite images. Not differentiable (a data loader).
    """
    src = str(path_or_builtin)
    path = builtin_path(src) if src in BUILTIN_IMAGES else Path(src)
    arr = _read(path, src)
    img = _to_hwc_float(arr, src)
    if max_size is not None:
        img = _downscale(img, max_size, src)
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))


def _read(path: Path, src: str) -> np.ndarray:
    if not path.exists():
        names = ", ".join(sorted(BUILTIN_IMAGES))
        raise InputError(f"image {src!r} not found: neither a file nor a built-in image ({names})")
    if path.is_dir():
        raise InputError(f"image path {src!r} is a directory, expected an image file")
    if path.suffix.lower() == ".exr":
        return _read_exr(path)
    import imageio.v3 as iio

    try:
        with warnings.catch_warnings():  # imageio's legacy plugins warn while probing unknown files
            warnings.simplefilter("ignore", DeprecationWarning)
            return np.asarray(iio.imread(path, index=0))  # first frame of multi-frame files
    except Exception as e:  # imageio raises many types (OSError, ValueError, plugin errors)
        raise InputError(f"cannot read image {src!r}: {_one_line(e)}") from None


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _read_exr(path: Path) -> np.ndarray:
    """EXR through imageio's OpenCV plugin (no run-time download); a clear error otherwise."""
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise InputError(
            f"reading EXR file {str(path)!r} needs OpenCV: pip install opencv-python-headless "
            "(or convert the image to 16-bit PNG/TIFF)"
        ) from None
    import imageio.v3 as iio

    try:
        arr = np.asarray(iio.imread(path, plugin="opencv", flags=-1))  # IMREAD_UNCHANGED
    except Exception as e:
        raise InputError(f"cannot read EXR image {str(path)!r}: {_one_line(e)}") from None
    return arr[..., [2, 1, 0, *range(3, arr.shape[-1])]] if arr.ndim == 3 and arr.shape[-1] >= 3 else arr


def _to_hwc_float(arr: np.ndarray, src: str) -> np.ndarray:
    if arr.size == 0:
        raise InputError(f"image {src!r} is empty (shape {arr.shape})")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"image {src!r} has unsupported shape {arr.shape}; expected [H, W] or [H, W, 1|2|3|4]")
    h, w, c = arr.shape
    if min(h, w) < MIN_SIZE:
        raise InputError(f"image {src!r} is too small ({h}x{w}); need at least {MIN_SIZE}x{MIN_SIZE} pixels")
    if arr.dtype == bool:
        img = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        img = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    elif np.issubdtype(arr.dtype, np.floating):
        img = arr.astype(np.float32)
        if not np.isfinite(img).all():
            raise InputError(f"image {src!r} contains NaN or infinite values")
        if img.min() < 0 or img.max() > 1:
            warnings.warn(f"image {src!r} has values in [{img.min():.3g}, {img.max():.3g}]; clipped to [0, 1]")
            img = img.clip(0, 1)
    else:
        raise InputError(f"image {src!r} has unsupported pixel type {arr.dtype}")
    if c == 2:  # gray + alpha -> RGBA
        img = np.concatenate([img[..., :1]] * 3 + [img[..., 1:]], axis=-1)
    return img


def _downscale(img: np.ndarray, max_size: int, src: str) -> np.ndarray:
    if max_size < MIN_SIZE:
        raise InputError(f"max_size must be at least {MIN_SIZE}, got {max_size}")
    h, w = img.shape[:2]
    s = max_size / max(h, w)
    if s >= 1:
        return img
    size = (max(MIN_SIZE, round(h * s)), max(MIN_SIZE, round(w * s)))
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
    t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return t[0].permute(1, 2, 0).clamp(0, 1).numpy()


def pixel_coords(H: int, W: int, device: torch.device | str | None = None) -> Tensor:
    """Pixel centres of an ``H x W`` image in ``[-1, 1]^2``, row-major: ``[H * W, 2]`` float32.

    Coordinate 0 is the column (x), coordinate 1 the row (y): ``x_j = -1 + 2 j / (W - 1)``,
    ``y_i = -1 + 2 i / (H - 1)``; row ``i * W + j`` of the result is pixel ``(i, j)``. This matches
    ``grid_sample(align_corners=True)``, so a dense grid with ``R = W`` (= ``H``) nodes reproduces the
    image exactly. Needs ``H, W >= 2``.
    """
    if H < 2 or W < 2:
        raise ValueError(f"pixel_coords needs H, W >= 2, got {H}x{W}")
    ys = torch.linspace(-1.0, 1.0, H, device=device)
    xs = torch.linspace(-1.0, 1.0, W, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)
