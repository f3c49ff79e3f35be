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
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from gridfield import memory
from gridfield.errors import InputError, regular_file

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

    ``max_size``: if given, downscale (anti-aliased) so that ``max(H, W) <= max_size`` (after decoding
    at full size). Unsigned integer samples are divided by their full scale: ``2^bits - 1`` of the
    file's bit depth (1/2/4/8/16-bit PNG, 8/12/16-bit TIFF, ...), so 16-bit colour PNGs keep all 16
    bits; 1-bit images become 0/1; palette images become RGB (RGBA when the palette has
    transparency), a PNG colour key (tRNS) becomes an alpha channel; TIFF "min-is-white" is inverted
    and TIFF palettes are applied. Float images (e.g. EXR, float TIFF) are clipped to ``[0, 1]`` with a
    warning when out of range; gray+alpha becomes RGBA. Signed integer images are refused (no standard
    mapping to [0, 1]: convert them to unsigned or float). Only the first frame of a multi-frame file
    is used. Raises ``InputError`` for missing, unreadable, empty, too small (< 8 px per side) or
    non-finite images, a path that is not a regular file (directory, FIFO, device), and an image whose
    decoding would not fit in the available memory (checked from the header, before decoding). Not
    differentiable (a data loader).
    """
    src = str(path_or_builtin)
    path = builtin_path(src) if src in BUILTIN_IMAGES else Path(src)
    arr, full_scale = read_pixels(path, src)
    img = _to_hwc_float(arr, src, full_scale)
    if max_size is not None:
        img = _downscale(img, max_size, src)
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))


def read_pixels(path: str | Path, src: str | None = None) -> tuple[np.ndarray, int | None]:
    """Decode the first frame of an image file: ``(samples, full_scale)``.

    ``samples`` is ``[H, W]`` or ``[H, W, C]`` as stored (uint8/uint16/bool/float...; palettes expanded,
    PNG colour keys turned into alpha); ``full_scale`` is the integer value that means 1.0 (``2^bits -
    1`` of the file's bit depth) or None for the type's maximum (floats: 1.0). ``src`` names the image
    in errors (default: the path). Refuses non-regular files and, from the header, images whose
    decoding would not fit in the available memory (:func:`gridfield.memory.estimate_image_bytes`).
    """
    path = Path(path)
    src = str(path) if src is None else src
    if not path.exists() and not path.is_symlink():
        names = ", ".join(sorted(BUILTIN_IMAGES))
        raise InputError(f"image {src!r} not found: neither a file nor a built-in image ({names})")
    if path.is_dir():
        raise InputError(f"image path {src!r} is a directory, expected an image file")
    regular_file(path, "image")
    if path.suffix.lower() == ".exr":
        return _read_exr(path), None
    try:
        with open(path, "rb") as fh:
            head = fh.read(33)
        if head[:8] == _PNG_SIGNATURE:
            return _read_png(path, src, head)
        if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _read_tiff(path, src)
        if head[:2] in (b"P5", b"P6"):
            return _read_pnm(path, src)
        return _read_pillow(path, src), None
    except InputError:
        raise
    except Exception as e:  # decoders raise many types (OSError, ValueError, plugin errors)
        raise InputError(f"cannot read image {src!r}: {_one_line(e)}") from None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (palette: RGB)


def _guard_decode(src: str, h: int, w: int, c: int, itemsize: int) -> None:
    memory.guard(memory.estimate_image_bytes(h, w, c, itemsize), f"decoding it ({w} x {h} x {c}, "
                 f"{8 * itemsize}-bit)", f"image {src!r}", "use a smaller image (max_size downsamples only "
                 "after decoding at full size)")


def _read_png(path: Path, src: str, head: bytes) -> tuple[np.ndarray, int | None]:
    """PNG through Pillow, keeping what Pillow drops: the low bytes of 16-bit colour (decoded twice,
    high and low bytes, and recombined), palette transparency and tRNS colour keys."""
    if head[12:16] != b"IHDR" or len(head) < 26:
        raise InputError(f"cannot read image {src!r}: PNG header (IHDR) missing; the file is damaged")
    w, h, depth, ctype = struct.unpack(">IIBB", head[16:26])
    if ctype not in _PNG_CHANNELS or w == 0 or h == 0:
        raise InputError(f"cannot read image {src!r}: invalid PNG header ({w} x {h}, colour type {ctype})")
    _guard_decode(src, h, w, _PNG_CHANNELS[ctype] + (ctype == 3), 2 if depth == 16 else 1)
    if depth == 16 and ctype in (2, 4, 6):
        if ctype == 4:  # gray + alpha: 4 bytes per pixel read as 8-bit RGBA = (G hi, G lo, A hi, A lo)
            b = _png_decode(path, "RGBA").astype(np.uint16)
            arr = np.stack([b[..., 0] << 8 | b[..., 1], b[..., 2] << 8 | b[..., 3]], -1)
        else:
            mode = "RGB" if ctype == 2 else "RGBA"
            hi = _png_decode(path, f"{mode};16B").astype(np.uint16)
            arr = hi << 8 | _png_decode(path, f"{mode};16L").astype(np.uint16)
        full = 65535
    else:
        with Image.open(path) as im:
            arr = _pillow_array(im, src)
        full = 65535 if depth == 16 else None
        if arr.dtype == np.int32:  # old Pillow opens 16-bit gray as 32-bit "I"
            arr = arr.astype(np.uint16)
    if ctype in (0, 2):
        with Image.open(path) as im:
            key = im.info.get("transparency")
        if key is not None:
            arr = _colour_key(arr, key, depth)
    return arr, full


def _png_decode(path: Path, rawmode: str) -> np.ndarray:
    """Pillow's PNG decoder (unfiltering, interlace) with its unpacker replaced by ``rawmode``."""
    with Image.open(path) as im:
        im.tile = [t._replace(args=rawmode) if hasattr(t, "_replace") else (t[0], t[1], t[2], rawmode)
                   for t in im.tile]
        im.load()
        return np.asarray(im)


def _colour_key(arr: np.ndarray, key, depth: int) -> np.ndarray:
    """Gray or RGB samples with a PNG tRNS colour key -> gray+alpha or RGBA (alpha 0 on the key)."""
    key = np.asarray(key if isinstance(key, tuple) else (key,))
    if arr.dtype == bool:
        match = arr == bool(key[0])
        return np.stack([arr, ~match], -1)
    if depth < 8:  # Pillow scales 2/4-bit gray to 0..255
        key = key * (255 // (2**depth - 1))
    samples = arr[..., None] if arr.ndim == 2 else arr
    match = (samples == key.astype(arr.dtype)).all(-1)
    alpha = np.where(match, 0, np.iinfo(arr.dtype).max).astype(arr.dtype)
    return np.concatenate([samples, alpha[..., None]], -1)


def _pillow_array(im, src: str) -> np.ndarray:
    """The samples of an opened Pillow image; palettes and exotic colour spaces converted to RGB(A)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("La", "RGBa"):
        im = im.convert(mode[:-1] + "A")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
        raise InputError(f"image {src!r} has the unsupported Pillow mode {mode!r}; convert it to 8/16-bit RGB(A)")
    arr = np.asarray(im)
    if mode.startswith("I;16"):
        arr = arr.astype(np.uint16)
    return arr


def _read_pillow(path: Path, src: str) -> np.ndarray:
    """JPEG, BMP, GIF, WebP, ... through Pillow (size checked from the header first); formats Pillow
    does not know through imageio."""
    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        import imageio.v3 as iio

        with warnings.catch_warnings():  # imageio's legacy plugins warn while probing unknown files
            warnings.simplefilter("ignore", DeprecationWarning)
            return np.asarray(iio.imread(path, index=0))
    with im:
        itemsize = 4 if im.mode in ("I", "F") else 2 if im.mode.startswith("I;16") else 1
        channels = 4 if im.mode in ("P", "PA") else len(im.getbands())
        _guard_decode(src, im.height, im.width, channels, itemsize)
        arr = _pillow_array(im, src)
    if arr.dtype == np.int32:
        raise InputError(f"image {src!r} has 32-bit signed integer pixels (Pillow mode 'I'), whose full scale "
                         "is unknown; convert it to 8/16-bit PNG or TIFF, or to float TIFF")
    return arr


def _read_pnm(path: Path, src: str) -> tuple[np.ndarray, int]:
    """Binary PGM/PPM (P5 gray, P6 RGB), 8 or 16 bits, read directly: full scale = the header's maxval."""
    with open(path, "rb") as fh:
        data = fh.read(4096)
        tokens, pos = [], 2
        while len(tokens) < 3:
            while pos < len(data) and data[pos : pos + 1].isspace():
                pos += 1
            if data[pos : pos + 1] == b"#":
                pos = data.find(b"\n", pos) + 1 or len(data)
                continue
            end = pos
            while end < len(data) and data[end : end + 1].isdigit():
                end += 1
            if end == pos:
                raise InputError(f"cannot read image {src!r}: damaged PGM/PPM header")
            tokens.append(int(data[pos:end]))
            pos = end
        w, h, maxval = tokens
        if not (w > 0 and h > 0 and 0 < maxval < 65536):
            raise InputError(f"cannot read image {src!r}: PGM/PPM header {w} x {h}, maxval {maxval}")
        c = 3 if data[:2] == b"P6" else 1
        item = 2 if maxval > 255 else 1
        _guard_decode(src, h, w, c, item)
        fh.seek(pos + 1)
        raw = fh.read(w * h * c * item)
    if len(raw) < w * h * c * item:
        raise InputError(f"cannot read image {src!r}: the file ends before its {w} x {h} x {c} pixels")
    arr = np.frombuffer(raw, ">u2" if item == 2 else np.uint8).astype(np.uint16 if item == 2 else np.uint8)
    return arr.reshape(h, w, c) if c == 3 else arr.reshape(h, w), maxval


def _read_tiff(path: Path, src: str) -> tuple[np.ndarray, int | None]:
    """TIFF through tifffile: bit depth, sample format, planar layout, min-is-white and palettes."""
    import tifffile  # deferred: TIFF files only (tifffile comes with scikit-image)

    with tifffile.TiffFile(path) as tf:
        if not tf.pages:
            raise InputError(f"image {src!r} is a TIFF file without images")
        page = tf.pages[0]
        photometric = _enum_name(tifffile.PHOTOMETRIC, page.photometric)
        bits = int(page.bitspersample)
        fmt = _enum_name(tifffile.SAMPLEFORMAT, page.sampleformat)
        if fmt == "INT":
            raise InputError(f"image {src!r} has signed {bits}-bit integer samples (TIFF SampleFormat INT), "
                             "which have no standard mapping to [0, 1]; convert it to unsigned integers or float")
        if fmt not in ("UINT", "IEEEFP"):
            raise InputError(f"image {src!r} has TIFF sample format {fmt}; gridfield reads unsigned integer "
                             "and float TIFFs")
        if photometric not in ("MINISBLACK", "MINISWHITE", "RGB", "PALETTE"):
            raise InputError(f"image {src!r} has the TIFF colour space {photometric}; gridfield reads gray, RGB "
                             "and palette TIFFs (convert it to RGB)")
        channels = 3 if photometric == "PALETTE" else int(page.samplesperpixel)
        itemsize = 2 if photometric == "PALETTE" else np.dtype(page.dtype).itemsize
        _guard_decode(src, int(page.imagelength), int(page.imagewidth), channels, itemsize)
        arr = page.asarray()
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and arr.ndim == 3 and page.samplesperpixel > 1:
            arr = np.moveaxis(arr, 0, -1)
        colormap = page.colormap if photometric == "PALETTE" else None
    full = None
    if arr.dtype != bool and np.issubdtype(arr.dtype, np.unsignedinteger) and bits < 8 * arr.dtype.itemsize:
        full = 2**bits - 1  # e.g. 12-bit samples stored in uint16
    if photometric == "PALETTE":
        if colormap is None:
            raise InputError(f"image {src!r} is a palette TIFF without a colour map")
        cmap = np.asarray(colormap)
        arr = np.moveaxis(cmap[:, arr.astype(np.intp)], 0, -1)
        full = 255 if cmap.max() < 256 else 65535  # some writers store 8-bit colour maps
        arr = arr.astype(np.uint16)
    elif photometric == "MINISWHITE":
        top = full if full is not None else (1 if arr.dtype == bool else None)
        if arr.dtype == bool:
            arr = ~arr
        elif np.issubdtype(arr.dtype, np.floating):
            arr = 1.0 - arr
        else:
            arr = ((top or np.iinfo(arr.dtype).max) - arr).astype(arr.dtype)
    return arr, full


def _enum_name(enum, value) -> str:
    try:
        return enum(int(value)).name
    except (ValueError, TypeError):
        return str(value)


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


def to_unit_float(arr: np.ndarray, src: str, full_scale: int | None = None) -> np.ndarray:
    """Samples -> float32 in ``[0, 1]``: bool as 0/1, unsigned integers divided by ``full_scale``
    (default: the type's maximum), floats checked finite and clipped to ``[0, 1]`` with a warning.
    Signed integers and other types raise :class:`InputError` naming ``src``. Shapes are unchanged."""
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.signedinteger):
        raise InputError(f"image {src!r} has signed integer pixels ({arr.dtype}), which have no standard "
                         "mapping to [0, 1]; convert it to unsigned integers (uint8/uint16) or float")
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        top = np.iinfo(arr.dtype).max if full_scale is None else full_scale
        img = arr.astype(np.float32) / np.float32(top)
        return img if full_scale is None else img.clip(0, 1)  # a sample above the full scale: damaged file
    if np.issubdtype(arr.dtype, np.floating):
        img = arr.astype(np.float32)
        if not np.isfinite(img).all():
            raise InputError(f"image {src!r} contains NaN or infinite values")
        if img.size and (img.min() < 0 or img.max() > 1):
            warnings.warn(f"image {src!r} has values in [{img.min():.3g}, {img.max():.3g}]; clipped to [0, 1]",
                          stacklevel=2)
            img = img.clip(0, 1)
        return img
    raise InputError(f"image {src!r} has unsupported pixel type {arr.dtype}")


def _to_hwc_float(arr: np.ndarray, src: str, full_scale: int | None = None) -> np.ndarray:
    if arr.size == 0:
        raise InputError(f"image {src!r} is empty (shape {arr.shape})")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"image {src!r} has unsupported shape {arr.shape}; expected [H, W] or [H, W, 1|2|3|4]")
    h, w, c = arr.shape
    if min(h, w) < MIN_SIZE:
        raise InputError(f"image {src!r} is too small ({h}x{w}); need at least {MIN_SIZE}x{MIN_SIZE} pixels")
    img = to_unit_float(arr, src, full_scale)
    if c == 2:  # gray + alpha -> RGBA
        img = np.concatenate([img[..., :1]] * 3 + [img[..., 1:]], axis=-1)
    return img


def _downscale(img: np.ndarray, max_size: int, src: str) -> np.ndarray:
    whole = isinstance(max_size, (int, np.integer)) and not isinstance(max_size, bool)
    if not whole or max_size < MIN_SIZE:
        raise InputError(f"max_size must be a whole number of pixels, at least {MIN_SIZE}, got {max_size!r}")
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
