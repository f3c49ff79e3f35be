"""Reliability of the data loaders (#17): malformed scenes, every PNG/TIFF encoding against an
independent writer or reader, special files, a missing optional dependency, memory refusals.

Independent references: PNGs are written here byte by byte (zlib + struct, no imaging library), so
the expected floats are the written samples over ``2^depth - 1``; TIFFs are written with tifffile and
compared with those samples or with Pillow's own TIFF reader (min-is-white, palettes, 1-bit).
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import threading
import zlib

import numpy as np
import pytest
import torch

from gridfield import memory
from gridfield.data.blender import load_blender
from gridfield.data.images import load_image, to_unit_float
from gridfield.errors import InputError, missing_extra

RNG = np.random.default_rng(17)


# ----------------------------------------------------------------------------------------------
# Malformed Blender scenes
# ----------------------------------------------------------------------------------------------
def _scene(root, frames=2, size=(6, 4), meta_extra=None, frame_edit=None):
    """A tiny valid scene; ``meta_extra`` updates the top level, ``frame_edit(i, frame)`` each frame."""
    from PIL import Image

    h, w = size
    (root / "train").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(frames):
        Image.fromarray(RNG.integers(0, 256, (h, w, 4), dtype=np.uint8)).save(root / "train" / f"r_{i}.png")
        c2w = np.eye(4)
        c2w[:3, 3] = [0, 0, 4 + i]
        entry = {"file_path": f"./train/r_{i}", "transform_matrix": c2w.tolist()}
        if frame_edit:
            frame_edit(i, entry)
        entries.append(entry)
    meta = {"camera_angle_x": 0.5, "frames": entries}
    meta.update(meta_extra or {})
    meta = {k: v for k, v in meta.items() if v is not _DROP}
    (root / "transforms_train.json").write_text(json.dumps(meta))
    return root / "transforms_train.json"


_DROP = object()


def _in_frame(i, key, value):
    def edit(j, entry):
        if j == i:
            if value is _DROP:
                del entry[key]
            else:
                entry[key] = value
    return edit


_ROT = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
SCENE_CASES = [
    # (id, top-level changes, frame edit, message regex)
    ("angle-zero", {"camera_angle_x": 0}, None, r"'camera_angle_x' must be the horizontal field of view in radians, "
                                                r"between 0 and pi \(180 degrees\), got 0"),
    ("angle-negative", {"camera_angle_x": -0.7}, None, r"'camera_angle_x' .* between 0 and pi .*got -0\.7"),
    ("angle-pi", {"camera_angle_x": math.pi}, None, r"'camera_angle_x' .* between 0 and pi"),
    ("angle-2pi", {"camera_angle_x": 2 * math.pi}, None, r"'camera_angle_x' .* between 0 and pi .*got 6\.28"),
    ("angle-string", {"camera_angle_x": "wide"}, None,
     r"'camera_angle_x' must be a finite number \(the horizontal field of view in radians\), got 'wide'"),
    ("angle-nan", {"camera_angle_x": float("nan")}, None, r"'camera_angle_x' must be a finite number .*got nan"),
    ("angle-bool", {"camera_angle_x": True}, None, r"'camera_angle_x' must be a finite number .*got True"),
    ("no-intrinsics", {"camera_angle_x": _DROP}, None, r"needs 'camera_angle_x' or 'fl_x'"),
    ("w-string", {"w": "4"}, None, r"'w' must be a positive whole number of pixels, got '4'"),
    ("h-zero", {"h": 0}, None, r"'h' must be a positive whole number of pixels, got 0"),
    ("w-negative", {"w": -4}, None, r"'w' must be a positive whole number of pixels, got -4"),
    ("w-fraction", {"w": 4.5}, None, r"'w' must be a positive whole number of pixels, got 4\.5"),
    ("w-mismatch", {"w": 8}, None, r"w/h 8x6 do not match the images \(4x6\)"),
    ("flx-zero", {"fl_x": 0}, None, r"'fl_x' must be a positive focal length in pixels, got 0"),
    ("flx-string", {"fl_x": "a"}, None, r"'fl_x' must be a finite number \(a focal length in pixels\), got 'a'"),
    ("fly-negative", {"fl_x": 5.0, "fl_y": -5.0}, None, r"'fl_y' must be a positive focal length in pixels, got -5\.0"),
    ("cx-outside", {"fl_x": 5.0, "w": 4, "h": 6, "cx": 40.0}, None,
     r"'cx' = 40\.0 lies outside the image \(0 to 4 pixels\)"),
    ("no-frames", {"frames": _DROP}, None, r"expected an object with a non-empty 'frames' list \(no 'frames' key\)"),
    ("empty-frames", {"frames": []}, None, r"expected an object with a non-empty 'frames' list"),
    ("pose-zero", None, _in_frame(1, "transform_matrix", np.zeros((4, 4)).tolist()),
     r"frame 1 \(\./train/r_1\): 'transform_matrix' is not a rigid camera-to-world pose: its rotation part is not "
     r"orthonormal \(max \|R\^T R - I\| = 1,"),
    ("pose-scaled", None, _in_frame(0, "transform_matrix", np.diag([2.0, 2.0, 2.0, 1.0]).tolist()),
     r"frame 0 \(\./train/r_0\): 'transform_matrix' is not a rigid .*max \|R\^T R - I\| = 3,"),
    ("pose-reflection", None, _in_frame(1, "transform_matrix", np.diag([1.0, 1.0, -1.0, 1.0]).tolist()),
     r"frame 1 \(\./train/r_1\): 'transform_matrix' is a reflection \(its rotation part has determinant -1\)"),
    ("pose-last-row", None, _in_frame(1, "transform_matrix", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 1, 1]]),
     r"frame 1 \(\./train/r_1\): 'transform_matrix' last row is \[0\.0, 0\.0, 1\.0, 1\.0\], expected \[0, 0, 0, 1\]"),
    ("pose-nan", None, _in_frame(0, "transform_matrix", [[float("nan")] * 4] * 4),
     r"frame 0 \(\./train/r_0\): 'transform_matrix' must be a finite 4x4 matrix, got shape \(4, 4\) with NaN"),
    ("pose-3x4", None, _in_frame(1, "transform_matrix", np.eye(4)[:3].tolist()),
     r"frame 1 \(\./train/r_1\): 'transform_matrix' must be a finite 4x4 matrix, got shape \(3, 4\)"),
    ("pose-strings", None, _in_frame(1, "transform_matrix", [["a"] * 4] * 4),
     r"frame 1 \(\./train/r_1\): 'transform_matrix' must be a 4x4 list of numbers"),
    ("pose-missing", None, _in_frame(1, "transform_matrix", _DROP),
     r"frame 1 \(\./train/r_1\): missing 'transform_matrix'"),
    ("file-path-number", None, _in_frame(0, "file_path", 5), r"frame 0: 'file_path' must be a non-empty string, got 5"),
    ("file-path-missing", None, _in_frame(1, "file_path", _DROP), r"frame 1: missing 'file_path'"),
]


@pytest.mark.parametrize("meta_extra, frame_edit, message", [c[1:] for c in SCENE_CASES],
                         ids=[c[0] for c in SCENE_CASES])
def test_malformed_scene_is_refused_naming_file_frame_and_key(tmp_path, meta_extra, frame_edit, message):
    path = _scene(tmp_path, meta_extra=meta_extra, frame_edit=frame_edit)
    with pytest.raises(InputError, match=message) as err:
        load_blender(tmp_path)
    assert str(path) in str(err.value), "the message names the transforms file"
    assert "\n" not in str(err.value)


def test_poses_and_intrinsics_are_checked_before_any_image_is_read(tmp_path):
    _scene(tmp_path, frames=3, frame_edit=_in_frame(2, "transform_matrix", np.zeros((4, 4)).tolist()))
    (tmp_path / "train" / "r_0.png").write_bytes(b"not an image")  # never decoded: the pose fails first
    with pytest.raises(InputError, match=r"frame 2 .*not a rigid"):
        load_blender(tmp_path)


def test_valid_but_unusual_scenes_still_load(tmp_path):
    noisy = np.eye(4)
    noisy[:3, :3] = _ROT + 1e-5 * RNG.standard_normal((3, 3))  # JSON round-off, far inside the tolerance
    _scene(tmp_path, meta_extra={"fl_x": 5.0, "w": 4.0, "h": 6},
           frame_edit=_in_frame(1, "transform_matrix", noisy.tolist()))
    s = load_blender(tmp_path)
    assert s.K.fx == 5.0 and (s.K.width, s.K.height) == (4, 6)
    np.testing.assert_allclose(s.c2w[1].numpy(), noisy, atol=1e-6)


def test_scene_options_are_checked(tmp_path):
    _scene(tmp_path)
    for kwargs, message in [({"downscale": 0}, "downscale must be a positive integer, got 0"),
                            ({"downscale": 1.5}, "downscale must be a positive integer, got 1.5"),
                            ({"near": float("nan")}, r"0 <= near < far, got near nan"),
                            ({"near": 6.0, "far": 2.0}, r"0 <= near < far, got near 6\.0, far 2\.0")]:
        with pytest.raises(InputError, match=message):
            load_blender(tmp_path, **kwargs)


def test_sixteen_bit_scene_images_keep_their_precision(tmp_path):
    _scene(tmp_path, frames=1)
    rgba = RNG.integers(0, 65536, (6, 4, 4))
    _write_png(tmp_path / "train" / "r_0.png", rgba, 6, 16)
    s = load_blender(tmp_path, background=(0.0, 0.0, 0.0))
    x = rgba / 65535.0
    np.testing.assert_allclose(s.images[0].numpy(), x[..., :3] * x[..., 3:], atol=1e-6)
    np.testing.assert_allclose(s.alphas[0].numpy(), x[..., 3], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Image encodings against independent writers and readers
# ----------------------------------------------------------------------------------------------
def _write_png(path, samples, color_type, depth, palette=None, trns=None):
    """A PNG written byte by byte: ``samples`` ``[H, W, C]`` integers (``[H, W]`` palette indices),
    filter type 0 on every row, one IDAT chunk; ``trns`` the raw tRNS chunk payload."""
    a = np.asarray(samples)
    a = a[..., None] if a.ndim == 2 else a
    h, w, _ = a.shape
    rows = []
    for r in a:
        if depth == 16:
            raw = r.astype(">u2").tobytes()
        elif depth == 8:
            raw = r.astype(np.uint8).tobytes()
        else:
            flat = r.reshape(-1).astype(np.uint8)
            per = 8 // depth
            flat = np.concatenate([flat, np.zeros((-len(flat)) % per, np.uint8)]).reshape(-1, per)
            shifts = np.array([8 - depth * (k + 1) for k in range(per)], np.uint8)
            raw = (flat << shifts).sum(1).astype(np.uint8).tobytes()
        rows.append(b"\0" + raw)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
    if palette is not None:
        out += chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).reshape(-1)))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    path.write_bytes(out + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def _gray_alpha_to_rgba(x):
    return np.concatenate([x[..., :1]] * 3 + [x[..., 1:]], -1) if x.shape[-1] == 2 else x


PNG_CASES = [(0, 1, 1), (0, 2, 1), (0, 4, 1), (0, 8, 1), (0, 16, 1), (2, 8, 3), (2, 16, 3),
             (4, 8, 2), (4, 16, 2), (6, 8, 4), (6, 16, 4)]


@pytest.mark.parametrize("color_type, depth, channels", PNG_CASES,
                         ids=[f"type{t}-{d}bit" for t, d, _ in PNG_CASES])
def test_png_samples_scale_by_their_bit_depth(tmp_path, color_type, depth, channels):
    top = 2**depth - 1
    samples = RNG.integers(0, top + 1, (9, 11, channels))
    samples[0, 0] = top  # both ends of the range occur
    samples[0, 1] = 0
    path = tmp_path / "x.png"
    _write_png(path, samples, color_type, depth)
    got = load_image(str(path)).numpy()
    expect = _gray_alpha_to_rgba(samples / top)
    assert got.shape == expect.shape
    np.testing.assert_allclose(got, expect, atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
@pytest.mark.parametrize("transparent", [False, True])
def test_palette_png_with_and_without_transparency(tmp_path, depth, transparent):
    n = 2**depth
    palette = RNG.integers(0, 256, (n, 3))
    index = RNG.integers(0, n, (9, 11))
    alpha = RNG.integers(0, 256, n // 2 + 1)  # a short tRNS: the remaining entries are opaque
    path = tmp_path / "p.png"
    _write_png(path, index, 3, depth, palette=palette, trns=bytes(alpha.astype(np.uint8)) if transparent else None)
    got = load_image(str(path)).numpy()
    expect = palette[index] / 255.0
    if transparent:
        full = np.concatenate([alpha, np.full(n - len(alpha), 255)])
        expect = np.concatenate([expect, full[index][..., None] / 255.0], -1)
    np.testing.assert_allclose(got, expect, atol=1e-6)


@pytest.mark.parametrize("color_type, depth", [(0, 8), (0, 16), (0, 4), (2, 8), (2, 16)])
def test_png_colour_key_becomes_alpha(tmp_path, color_type, depth):
    top, c = 2**depth - 1, 1 if color_type == 0 else 3
    samples = RNG.integers(0, top + 1, (9, 11, c))
    key = samples[2, 3].copy()
    samples[4, 5] = key
    path = tmp_path / "k.png"
    _write_png(path, samples, color_type, depth, trns=struct.pack(f">{c}H", *key.tolist()))
    got = load_image(str(path)).numpy()
    transparent = (samples == key).all(-1)
    expect = _gray_alpha_to_rgba(np.concatenate([samples / top, (~transparent)[..., None] * 1.0], -1))
    np.testing.assert_allclose(got, expect, atol=1e-6)
    assert got[2, 3, -1] == 0 and got[4, 5, -1] == 0


TIFF_CASES = [("uint8-rgb", np.uint8, 3), ("uint16-gray", np.uint16, 1), ("uint16-rgb", np.uint16, 3),
              ("uint16-rgba", np.uint16, 4), ("float32-rgb", np.float32, 3), ("uint8-gray", np.uint8, 1)]


@pytest.mark.parametrize("dtype, channels", [c[1:] for c in TIFF_CASES], ids=[c[0] for c in TIFF_CASES])
def test_tiff_samples_against_tifffile(tmp_path, dtype, channels):
    import tifffile

    shape = (10, 12) if channels == 1 else (10, 12, channels)
    if dtype == np.float32:
        arr = RNG.random(shape, dtype=np.float32)
        expect = arr
    else:
        top = np.iinfo(dtype).max
        arr = RNG.integers(0, top + 1, shape, dtype=dtype)
        expect = arr / top
    extra = {"extrasamples": ["unassalpha"]} if channels == 4 else {}
    tifffile.imwrite(tmp_path / "t.tif", arr, photometric="rgb" if channels >= 3 else "minisblack", **extra)
    got = load_image(str(tmp_path / "t.tif")).numpy()
    np.testing.assert_allclose(got, expect.reshape(got.shape), atol=1e-6)


def test_tiff_layouts_match_pillow_and_the_samples(tmp_path):
    import tifffile
    from PIL import Image

    bits = RNG.random((10, 12)) > 0.5
    tifffile.imwrite(tmp_path / "b.tif", bits)  # tifffile writes 1-bit as min-is-white
    pil = np.asarray(Image.open(tmp_path / "b.tif"), dtype=np.float32)
    np.testing.assert_array_equal(load_image(str(tmp_path / "b.tif")).numpy()[..., 0], pil)
    gray = RNG.integers(0, 256, (10, 12), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "w.tif", gray, photometric="miniswhite")
    pil = np.asarray(Image.open(tmp_path / "w.tif")) / 255.0
    np.testing.assert_allclose(load_image(str(tmp_path / "w.tif")).numpy()[..., 0], pil, atol=1e-6)
    index = RNG.integers(0, 8, (10, 12), dtype=np.uint8)
    cmap = RNG.integers(0, 65536, (3, 256), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", index, photometric="palette", colormap=cmap)
    got = load_image(str(tmp_path / "p.tif")).numpy()
    np.testing.assert_allclose(got, np.moveaxis(cmap[:, index], 0, -1) / 65535.0, atol=1e-6)
    pil = np.asarray(Image.open(tmp_path / "p.tif").convert("RGB")) / 255.0  # Pillow keeps 8 bits
    assert np.abs(got - pil).max() <= 1 / 255 + 1e-6
    planes = RNG.integers(0, 256, (3, 10, 12), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", planes, planarconfig="separate", photometric="rgb")
    np.testing.assert_allclose(load_image(str(tmp_path / "s.tif")).numpy(), np.moveaxis(planes, 0, -1) / 255.0,
                               atol=1e-6)
    ga = RNG.integers(0, 65536, (10, 12, 2), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "ga.tif", ga, photometric="minisblack", extrasamples=["unassalpha"])
    np.testing.assert_allclose(load_image(str(tmp_path / "ga.tif")).numpy(), _gray_alpha_to_rgba(ga / 65535.0),
                               atol=1e-6)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
def test_signed_integer_images_are_refused(tmp_path, dtype):
    import tifffile

    arr = RNG.integers(-100, 100, (10, 12)).astype(dtype)
    tifffile.imwrite(tmp_path / "i.tif", arr)
    bits = 8 * np.dtype(dtype).itemsize
    with pytest.raises(InputError, match=rf"'.*i\.tif' has signed {bits}-bit integer samples .*no standard mapping "
                                         r"to \[0, 1\]; convert it to unsigned integers or float"):
        load_image(str(tmp_path / "i.tif"))
    with pytest.raises(InputError, match=rf"'arr' has signed integer pixels \({np.dtype(dtype).name}\)"):
        to_unit_float(arr, "arr")


def test_binary_pgm_scales_by_its_maxval(tmp_path):
    samples = RNG.integers(0, 4096, (10, 12))
    (tmp_path / "g.pgm").write_bytes(b"P5\n# a comment\n12 10\n4095\n" + samples.astype(">u2").tobytes())
    np.testing.assert_allclose(load_image(str(tmp_path / "g.pgm")).numpy()[..., 0], samples / 4095.0, atol=1e-6)
    rgb = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    (tmp_path / "c.ppm").write_bytes(b"P6 12 10 255\n" + rgb.tobytes())
    np.testing.assert_allclose(load_image(str(tmp_path / "c.ppm")).numpy(), rgb / 255.0, atol=1e-6)
    (tmp_path / "t.pgm").write_bytes(b"P5 12 10 255\n" + b"\0" * 20)
    with pytest.raises(InputError, match=r"'.*t\.pgm': the file ends before its 12 x 10 x 1 pixels"):
        load_image(str(tmp_path / "t.pgm"))


def test_image_larger_than_memory_is_refused_from_its_header(tmp_path, monkeypatch):
    # a PNG header announcing 100000 x 100000 RGB pixels, with no pixel data: nothing is decoded
    head = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
            + struct.pack(">IIBBBBB", 100000, 100000, 16, 2, 0, 0, 0))
    (tmp_path / "huge.png").write_bytes(head + b"\0" * 4)
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 21_300_000_000)
    with pytest.raises(InputError, match=r"^image '.*huge\.png' would need 4\d\d\.\d GB for decoding it "
                                         r"\(100000 x 100000 x 3, 16-bit\); this machine has 21\.3 GB available; "
                                         r"use a smaller image"):
        load_image(str(tmp_path / "huge.png"), max_size=512)
    import tifffile
    from PIL import Image

    tifffile.imwrite(tmp_path / "s.tif", np.zeros((64, 64, 3), np.uint16), photometric="rgb")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "s.jpg")
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 1000)
    with pytest.raises(InputError, match=r"'.*s\.tif' would need .* \(64 x 64 x 3, 16-bit\); this machine has 1\.0 kB"):
        load_image(str(tmp_path / "s.tif"))
    with pytest.raises(InputError, match=r"'.*s\.jpg' would need .* \(64 x 64 x 3, 8-bit\)"):
        load_image(str(tmp_path / "s.jpg"))


# ----------------------------------------------------------------------------------------------
# Special files are refused at once (a FIFO would block the open forever)
# ----------------------------------------------------------------------------------------------
def _returns_quickly(fn, seconds=20.0):
    """Run ``fn`` in a daemon thread; the exception it raised (fails when it blocks)."""
    box = {}

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the loader blocked on a special file"
    return box.get("error")


@pytest.fixture
def fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


def test_special_files_are_refused_by_every_loader(tmp_path, fifo):
    from gridfield.checkpoints import read_checkpoint
    from gridfield.data.meshes import load_mesh

    cases = [(lambda: load_image(str(fifo)), r"image '.*pipe\.png' is a named pipe \(FIFO\), not a regular file"),
             (lambda: load_mesh(fifo), r"mesh file '.*pipe\.png' is a named pipe \(FIFO\), not a regular file"),
             (lambda: read_checkpoint(fifo, "gridfield.image/1", "image"),
              r"checkpoint '.*pipe\.png' is a named pipe \(FIFO\)")]
    if os.path.exists("/dev/zero"):
        cases += [(lambda: load_image("/dev/zero"), r"image '/dev/zero' is a character device, not a regular file"),
                  (lambda: load_mesh("/dev/zero"), r"mesh file '/dev/zero' is a character device")]
    cases += [(lambda: load_image(str(tmp_path)), r"is a directory"), (lambda: load_mesh(tmp_path), r"is a directory")]
    for fn, message in cases:
        err = _returns_quickly(fn)
        assert isinstance(err, InputError), (message, err)
        assert __import__("re").search(message, str(err)), (message, str(err))


def test_special_files_in_a_scene_are_refused(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    _scene(tmp_path)
    (tmp_path / "train" / "r_1.png").unlink()
    os.mkfifo(tmp_path / "train" / "r_1.png")
    err = _returns_quickly(lambda: load_blender(tmp_path))
    assert isinstance(err, InputError) and "frame 1 (./train/r_1): image" in str(err) and "named pipe" in str(err)
    other = tmp_path / "b"
    other.mkdir()
    os.mkfifo(other / "transforms_train.json")
    err = _returns_quickly(lambda: load_blender(other))
    assert isinstance(err, InputError) and "transforms_train.json' is a named pipe (FIFO)" in str(err)


# ----------------------------------------------------------------------------------------------
# The mesh extra missing
# ----------------------------------------------------------------------------------------------
MESH_EXTRA = "gridfield sdf (and make-scene) needs the mesh extra ({} is not installed): pip install 'gridfield[mesh]'"


def test_missing_mesh_extra_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    from gridfield.data import meshes, scene_maker

    monkeypatch.setitem(sys.modules, "trimesh", None)  # import trimesh -> ModuleNotFoundError
    with pytest.raises(InputError) as err:
        meshes.load_mesh("torus_knot")
    assert str(err.value) == MESH_EXTRA.format("trimesh")
    with pytest.raises(InputError, match=r"^gridfield sdf \(and make-scene\) needs the mesh extra \(trimesh"):
        scene_maker.make_scene("torus_knot", tmp_path / "scene", views=1, test_views=1, size=8)
    assert not (tmp_path / "scene").exists()
    monkeypatch.setitem(sys.modules, "igl", None)
    with pytest.raises(InputError) as err:
        meshes.signed_distance(object(), np.zeros((1, 3)))
    assert str(err.value) == MESH_EXTRA.format("libigl")


def test_missing_extra_message_for_a_broken_install():
    e = missing_extra("trimesh", "mesh", "gridfield sdf", ImportError("libfoo.so: cannot open shared object file"))
    assert str(e) == ("gridfield sdf needs the mesh extra (trimesh cannot be imported: libfoo.so: cannot open "
                      "shared object file): pip install 'gridfield[mesh]'")
    assert isinstance(e, InputError) and isinstance(e, ValueError)


# ----------------------------------------------------------------------------------------------
# The scene maker checks everything before it loads the mesh or creates a folder
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"size": 100000}, r"^--size 100000 --supersample 2 would need 16\.4 TB for rendering one view \(100000 x 100000 "
                       r"pixels, 2\^2 rays each\); this machine has .* available; lower --size/--supersample$"),
    ({"distance": float("nan")}, r"distance must be a finite positive number, got nan"),
    ({"distance": 0.5}, r"camera distance 0\.5 must exceed the object radius 1\.0"),
    ({"views": 0}, r"views must be a whole number >= 1, got 0"),
    ({"test_views": 2.5}, r"test_views must be a whole number >= 1, got 2\.5"),
    ({"size": 3}, r"size must be a whole number >= 4, got 3"),
    ({"supersample": True}, r"supersample must be a whole number >= 1, got True"),
    ({"object_radius": float("inf")}, r"object_radius must be a finite positive number, got inf"),
])
def test_make_scene_refuses_before_any_work(tmp_path, monkeypatch, kwargs, message):
    from gridfield.data import scene_maker

    monkeypatch.setattr(scene_maker, "load_mesh", lambda *a: pytest.fail("the mesh was loaded"))
    with pytest.raises(InputError, match=message):
        scene_maker.make_scene("torus_knot", tmp_path / "out" / "scene", **kwargs)
    assert not (tmp_path / "out").exists()


def test_make_scene_writes_all_or_nothing(tmp_path, monkeypatch):
    from gridfield.data import scene_maker

    out = tmp_path / "scene"
    scene = scene_maker.make_scene("torus_knot", out, views=2, test_views=1, size=8, supersample=1)
    assert scene == out and (out / "transforms_val.json").is_file()
    s = load_blender(out, "train")
    assert s.images.shape == (2, 8, 8, 3) and torch.isfinite(s.c2w).all()
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = scene_maker._write_split

    def fail_on_test(folder, split, *args):
        if split == "test":
            raise KeyboardInterrupt
        real(folder, split, *args)

    monkeypatch.setattr(scene_maker, "_write_split", fail_on_test)
    with pytest.raises(KeyboardInterrupt):
        scene_maker.make_scene("torus_knot", out, views=3, test_views=1, size=8, supersample=1)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before, "an interrupted run left the previous scene as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"], "no temporary folder is left behind"
    with pytest.raises(InputError, match="is the current directory"):
        monkeypatch.chdir(tmp_path)
        scene_maker.make_scene("torus_knot", ".", views=1, test_views=1, size=8)
