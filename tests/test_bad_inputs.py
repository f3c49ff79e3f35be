"""Issue #17's "Done when": a table of bad and hostile inputs across every subcommand and the Python API.

Every case runs in a fresh sandbox folder holding a user's files (around and inside the places a
command could write) and asserts: exit status 2 (CLI) or :class:`~gridfield.errors.InputError` (API);
for the CLI exactly one stderr line ``error: ...`` naming the problem and no traceback; and the
sandbox (every path with its bytes) and the shared artifacts exactly as before. Most CLI cases run in
process through :func:`gridfield.cli.main`; those marked ``sub`` go through the real console script.
Then: SIGINT/SIGTERM of every long command (status 130, one line, nothing written) and the data-loss
test (the user's files survive every command with ``--out .`` and ``--out`` = their folder).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from gridfield.cli import main
from gridfield.errors import InputError
from gridfield.outdir import write_dir_atomically

pytestmark = pytest.mark.usefixtures("one_thread")
trimesh = pytest.importorskip("trimesh")

EXE = Path(sys.executable).with_name("gridfield")

# tiny settings of every command (a case's own options come after these: the last occurrence wins)
IMG = ["image", "camera", "--model", "dense", "--param-budget", "3000", "--max-size", "32", "--steps", "2",
       "--batch-size", "256", "--eval-every", "1", "--no-progress", "--checkpoint-every", "0"]
SDF = ["sdf", "--model", "dense", "--param-budget", "1000", "--samples", "2000", "--iou-resolution", "8",
       "--iou-points", "100", "--mesh-resolution", "8", "--chamfer-points", "100", "--batch-size", "64",
       "--steps", "2", "--no-progress", "--checkpoint-every", "0"]
NERF_OPTS = ["--resolution", "16", "--batch-rays", "64", "--occ-resolution", "8", "--occ-start", "1",
             "--occ-every", "1", "--turntable-frames", "0", "--no-progress", "--steps", "2", "--checkpoint-every", "0"]
SCENE = ["make-scene", "--views", "2", "--test-views", "1", "--size", "8", "--supersample", "1"]
SPECTRA = ["gtk-spectra", "--models", "dense", "--n1d", "8", "--side2d", "4"]
BOUND = ["gtk-bound-map", "--models", "dense", "--seeds", "1", "--resolution", "3"]
ERRMAPS = ["gtk-error-maps", "--models", "dense", "--max-size", "8", "--steps", "2", "--image", "camera"]
THEORY = ["gtk-theory", "--models", "dense", "--fit-models", "dense", "--side", "4", "--gd-steps", "2",
          "--adam-steps", "2", "--drift-every", "1", "--image", "camera", "--image-size", "8", "--fit-steps", "2"]


def nerf(scene: str = "{SC}", *extra: str) -> list[str]:
    return ["nerf", scene, *NERF_OPTS, *extra]


def render(ck: str = "{CK}", *extra: str) -> list[str]:
    return ["image-render", ck, *extra]


# ------------------------------------------------------------------------------------------------
# Shared artifacts (built once): an image, SDF and NeRF checkpoint and a tiny scene
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _reference_kernels():
    """Plain-PyTorch kernels in this module (its runs are tiny; no C++ build), subprocesses included."""
    old = os.environ.get("GRIDFIELD_FAST")
    os.environ["GRIDFIELD_FAST"] = "0"
    yield
    if old is None:
        os.environ.pop("GRIDFIELD_FAST", None)
    else:
        os.environ["GRIDFIELD_FAST"] = old


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> dict[str, Path]:
    from gridfield.data.scene_maker import make_scene

    root = tmp_path_factory.mktemp("artifacts")
    torch.set_num_threads(1)
    assert main([*IMG, "--out", str(root / "img")]) == 0
    scene = make_scene("torus_knot", root / "scene", views=4, test_views=2, size=12)
    assert main([*nerf(str(scene)), "--out", str(root / "nerf")]) == 0
    assert main([*SDF, "--out", str(root / "sdf")]) == 0
    return {"root": root, "scene": scene, "ck": root / "img" / "checkpoint.pt",
            "nck": root / "nerf" / "checkpoint.pt", "sck": root / "sdf" / "checkpoint.pt"}


def snapshot(root: Path) -> dict[str, tuple[str, bytes | None]]:
    """Every path below ``root`` (links not followed) with its kind and, for files, its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p).encode())
        elif p.is_fifo():
            out[rel] = ("fifo", None)
        elif p.is_dir():
            out[rel] = ("dir", None)
        else:
            out[rel] = ("file", p.read_bytes())
    return out


def user_files(sb: Path) -> None:
    """A user's files in the sandbox: loose files, a foreign folder, a previous output with a file added."""
    (sb / "data").mkdir(parents=True)
    (sb / "data" / "f").write_text("hi")
    (sb / "notes.txt").write_text("keep me")
    (sb / "kept").mkdir()
    (sb / "kept" / "ours.txt").write_text("mine")
    (sb / "home").mkdir()
    (sb / "home" / "diary.txt").write_text("private")
    write_dir_atomically(sb / "prev", lambda d: (d / "metrics.json").write_text("{}"))
    (sb / "prev" / "added.txt").write_text("added by the user")


# ------------------------------------------------------------------------------------------------
# Case builders
# ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    expect: str                         # a distinctive part of the one-line message
    argv: list[str] | None = None       # CLI case (placeholders {S} sandbox, {CK} {NCK} {SCK} {SC})
    call: Callable | None = None        # API case: call(sb, art) must raise ``exc``
    setup: Callable | None = None       # setup(sb, art) before the snapshot
    exc: type = InputError
    sub: bool = False                   # through the real console script
    env: dict = field(default_factory=dict)


CASES: list[Case] = []


def cli(id, argv, expect, setup=None, sub=False, env=None):
    CASES.append(Case(id, expect, argv=argv, setup=setup, sub=sub, env=env or {}))


def api(id, call, expect, setup=None, exc=InputError):
    CASES.append(Case(id, expect, call=call, setup=setup, exc=exc))


def write_bytes(name: str, data: bytes) -> Callable:
    def setup(sb, art):
        (sb / name).write_bytes(data)
    return setup


def fifo(name: str) -> Callable:
    def setup(sb, art):
        os.mkfifo(sb / name)
    return setup


def folder(name: str) -> Callable:
    def setup(sb, art):
        (sb / name).mkdir()
    return setup


def link(name: str, to: str) -> Callable:
    def setup(sb, art):
        (sb / name).symlink_to(to)
    return setup


def chain(*setups) -> Callable:
    def setup(sb, art):
        for s in setups:
            s(sb, art)
    return setup


def tiff(name: str, arr: np.ndarray, **kw) -> Callable:
    def setup(sb, art):
        import tifffile

        tifffile.imwrite(sb / name, arr, **kw)
    return setup


def png_header(name: str, w: int, h: int) -> Callable:
    """A PNG whose (valid, CRC-checked) header claims ``w x h`` RGB 8-bit pixels; no pixel data."""
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    chunk = len(ihdr).to_bytes(4, "big") + b"IHDR" + ihdr + zlib.crc32(b"IHDR" + ihdr).to_bytes(4, "big")
    return write_bytes(name, b"\x89PNG\r\n\x1a\n" + chunk)


def png(name: str, arr: np.ndarray) -> Callable:
    def setup(sb, art):
        import imageio.v3 as iio

        iio.imwrite(sb / name, arr)
    return setup


def scene_edit(edit: Callable, split: str = "train") -> Callable:
    """Copy the tiny scene to ``{S}/scene`` and apply ``edit(meta, scene_dir)`` to one transforms file
    (it edits the dict in place, or returns a replacement: a dict, a list or raw text)."""
    def setup(sb, art):
        d = sb / "scene"
        shutil.copytree(art["scene"], d)
        p = d / f"transforms_{split}.json"
        meta = json.loads(p.read_text())
        new = edit(meta, d)
        meta = meta if new is None else new
        if isinstance(meta, bytes):
            p.write_bytes(meta)
        else:
            p.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return setup


def frame0(key: str, value) -> Callable:
    def edit(meta, d):
        if value is _DELETE:
            del meta["frames"][0][key]
        else:
            meta["frames"][0][key] = value
    return scene_edit(edit)


def meta_set(**kv) -> Callable:
    def edit(meta, d):
        for k, v in kv.items():
            if v is _DELETE:
                meta.pop(k, None)
            else:
                meta[k] = v
    return scene_edit(edit)


_DELETE = object()


def pose(fn) -> Callable:
    def edit(meta, d):
        m = np.asarray(meta["frames"][0]["transform_matrix"])
        meta["frames"][0]["transform_matrix"] = fn(m).tolist()
    return scene_edit(edit)


def ck_edit(which: str, edit: Callable, name: str = "bad.pt") -> Callable:
    """Copy checkpoint ``which`` (``ck``, ``nck``, ``sck``) to ``{S}/name`` with ``edit(dict)`` applied
    (in place, or returning a replacement object to save)."""
    def setup(sb, art):
        ck = torch.load(art[which], weights_only=True)
        new = edit(ck)
        torch.save(ck if new is None else new, sb / name)
    return setup


def ck_bytes(which: str, cut: Callable[[bytes], bytes], name: str = "bad.pt") -> Callable:
    def setup(sb, art):
        (sb / name).write_bytes(cut(art[which].read_bytes()))
    return setup


class _Evil:
    """Unpickling this runs a shell command (it must never run: weights_only loading refuses it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_torch(name: str = "evil.pt", fmt: str = "gridfield.image/1") -> Callable:
    def setup(sb, art):
        torch.save({"format": fmt, "spec": _Evil(sb / "PWNED"), "state_dict": {}}, sb / name)
    return setup


def evil_pickle(name: str = "evil.pt") -> Callable:
    def setup(sb, art):
        (sb / name).write_bytes(pickle.dumps(_Evil(sb / "PWNED")))
    return setup


def del_key(*path):
    def edit(ck):
        d = ck
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return edit


def set_key(*path, value):
    def edit(ck):
        d = ck
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value(d[path[-1]]) if callable(value) else value
    return edit


def nan_weights(ck):
    k = next(iter(ck["state_dict"]))
    ck["state_dict"][k] = ck["state_dict"][k].clone()
    ck["state_dict"][k].view(-1)[0] = math.nan


def copy_in(which: str, name: str) -> Callable:
    def setup(sb, art):
        shutil.copy(art[which], sb / name)
    return setup


NAN, INF = "nan", "inf"

# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------
# -- data loss and bad --out (every command) ----------------------------------------------------
cli("image out dot", [*IMG, "--out", "."], "current directory", sub=True)
cli("image out empty", [*IMG, "--out", ""], "--out")
cli("image out dotdot", [*IMG, "--out", ".."], "current directory")
cli("image out root", [*IMG, "--out", "/"], "current directory")
cli("image out home", [*IMG, "--out", "~"], "home directory", env={"HOME": "{S}/home"})
cli("image out foreign folder", [*IMG, "--out", "{S}/kept"], "did not write")
cli("image out previous output + added file", [*IMG, "--out", "{S}/prev"], "added.txt")
cli("image out below a file", [*IMG, "--out", "{S}/notes.txt/run"], "which is a file")
cli("image out is a file", [*IMG, "--out", "{S}/notes.txt"], "not a directory")
cli("image out unwritable (read-only fs)", [*IMG, "--out", "/proc/gridfield-run"], "--out")
cli("image out broken link", [*IMG, "--out", "{S}/dangling"], "broken symbolic link", setup=link("dangling", "nowhere"))
cli("image out link to a foreign folder", [*IMG, "--out", "{S}/link"], "did not write", setup=link("link", "kept"))
cli("image out a FIFO", [*IMG, "--out", "{S}/pipe"], "not a directory", setup=fifo("pipe"))
cli("sdf out dot", [*SDF, "--out", "."], "current directory")
cli("sdf out unwritable (read-only fs)", [*SDF, "--out", "/proc/gridfield-sdf"], "cannot be created")
cli("sdf out foreign folder", [*SDF, "--out", "{S}/kept"], "did not write")
cli("sdf out below a file", [*SDF, "--out", "{S}/notes.txt/x/y"], "which is a file")
cli("nerf out dot", [*nerf(), "--out", "."], "current directory")
cli("nerf out previous output + added file", [*nerf(), "--out", "{S}/prev"], "added.txt")
cli("nerf out is a file", [*nerf(), "--out", "{S}/notes.txt"], "not a directory")
cli("make-scene out dotdot", [*SCENE, "--out", ".."], "current directory")
cli("make-scene out foreign folder", [*SCENE, "--out", "{S}/data"], "did not write")
cli("make-scene out is a file", [*SCENE, "--out", "{S}/notes.txt"], "not a directory")
cli("make-scene out unwritable (read-only fs)", [*SCENE, "--out", "/proc/gridfield-scene"], "cannot be created")
cli("gtk-spectra out below a file", [*SPECTRA, "--out", "{S}/notes.txt/g"], "which is a file")
cli("gtk-bound-map out foreign folder", [*BOUND, "--out", "{S}/kept"], "did not write")
cli("gtk-error-maps out previous output + added file", [*ERRMAPS, "--out", "{S}/prev"], "added.txt")
cli("gtk-theory out empty", [*THEORY, "--out", ""], "--out")
cli("gtk-theory out unwritable (read-only fs)", [*THEORY, "--out", "/sys/gridfield-theory"], "cannot be created")
cli("image-render out folder", render("{CK}", "--out", "{S}/kept"), "must end in .png")
cli("image-render out below a file", render("{CK}", "--out", "{S}/notes.txt/r.png"), "which is a file")
cli("image-render out is a folder named .png", render("{CK}", "--out", "{S}/dir.png"), "not a regular file",
    setup=folder("dir.png"))
cli("image-render out broken link", render("{CK}", "--out", "{S}/gone.png"), "not a regular file",
    setup=link("gone.png", "nowhere/x.png"))
cli("image-render out unwritable (read-only fs)", render("{CK}", "--out", "/proc/gridfield.png"), "cannot be written")

# -- malformed scenes (nerf) ----------------------------------------------------------------------
cli("scene camera_angle_x 0", nerf("{S}/scene"), "camera_angle_x", setup=meta_set(camera_angle_x=0))
cli("scene camera_angle_x string", nerf("{S}/scene"), "camera_angle_x", setup=meta_set(camera_angle_x="wide"))
cli("scene camera_angle_x negative", nerf("{S}/scene"), "camera_angle_x", setup=meta_set(camera_angle_x=-0.7))
cli("scene camera_angle_x 2 pi", nerf("{S}/scene"), "camera_angle_x", setup=meta_set(camera_angle_x=2 * math.pi))
cli("scene camera_angle_x NaN", nerf("{S}/scene"), "camera_angle_x", setup=meta_set(camera_angle_x=math.nan))
cli("scene camera_angle_x bool", nerf("{S}/scene"), "camera_angle_x", setup=meta_set(camera_angle_x=True))
cli("scene no intrinsics", nerf("{S}/scene"), "'fl_x'", setup=meta_set(camera_angle_x=_DELETE))
cli("scene w string", nerf("{S}/scene"), "'w'", setup=meta_set(fl_x=10.0, w="12", h=12))
cli("scene w zero", nerf("{S}/scene"), "'w'", setup=meta_set(fl_x=10.0, w=0, h=12))
cli("scene fl_x 0", nerf("{S}/scene"), "fl_x", setup=meta_set(fl_x=0, w=12, h=12))
cli("scene fl_y negative", nerf("{S}/scene"), "fl_y", setup=meta_set(fl_x=10.0, fl_y=-3.0))
cli("scene cx outside", nerf("{S}/scene"), "'cx'", setup=meta_set(fl_x=10.0, cx=50.0, w=12, h=12))
cli("scene w/h do not match images", nerf("{S}/scene"), "do not match", setup=meta_set(fl_x=10.0, w=24, h=24))
cli("scene all-zero transform_matrix", nerf("{S}/scene"), "transform_matrix", setup=pose(lambda m: 0 * m),
    sub=True)
cli("scene non-finite transform_matrix", nerf("{S}/scene"), "transform_matrix",
    setup=pose(lambda m: np.where(np.eye(4) > 0, np.inf, m)))
cli("scene scaled (non-rigid) pose", nerf("{S}/scene"), "rigid",
    setup=pose(lambda m: np.diag([2.0, 2.0, 2.0, 1.0]) @ m))
cli("scene reflection pose", nerf("{S}/scene"), "reflection", setup=pose(lambda m: m @ np.diag([-1.0, 1, 1, 1])))
cli("scene pose last row", nerf("{S}/scene"), "last row",
    setup=pose(lambda m: np.vstack([m[:3], [[0.0, 0.0, 1.0, 1.0]]])))
cli("scene pose 3x4", nerf("{S}/scene"), "4x4", setup=pose(lambda m: m[:3]))
cli("scene pose strings", nerf("{S}/scene"), "transform_matrix", setup=frame0("transform_matrix", "identity"))
cli("scene missing transform_matrix", nerf("{S}/scene"), "transform_matrix", setup=frame0("transform_matrix", _DELETE))
cli("scene missing file_path", nerf("{S}/scene"), "file_path", setup=frame0("file_path", _DELETE))
cli("scene file_path number", nerf("{S}/scene"), "file_path", setup=frame0("file_path", 7))
cli("scene empty frames", nerf("{S}/scene"), "frames", setup=meta_set(frames=[]))
cli("scene no frames key", nerf("{S}/scene"), "'frames'", setup=meta_set(frames=_DELETE))
cli("scene transforms is a list", nerf("{S}/scene"), "expected an object", setup=scene_edit(lambda m, d: [m]))
cli("scene transforms truncated JSON", nerf("{S}/scene"), "cannot read JSON",
    setup=scene_edit(lambda m, d: json.dumps(m)[:40]))
cli("scene transforms not UTF-8", nerf("{S}/scene"), "cannot read JSON",
    setup=scene_edit(lambda m, d: b"\xff\xfe{"))
cli("scene missing test split", nerf("{S}/scene"), "transforms_test.json",
    setup=scene_edit(lambda m, d: (d / "transforms_test.json").unlink()))
cli("scene missing image", nerf("{S}/scene"), "not found",
    setup=scene_edit(lambda m, d: (d / "train" / "r_0.png").unlink()))
cli("scene image is a FIFO", nerf("{S}/scene"), "FIFO",
    setup=scene_edit(lambda m, d: ((d / "train" / "r_1.png").unlink(), os.mkfifo(d / "train" / "r_1.png")) and None))
cli("scene image garbage", nerf("{S}/scene"), "cannot read",
    setup=scene_edit(lambda m, d: (d / "train" / "r_0.png").write_bytes(b"\x89PNG garbage") and None))
cli("scene image of another size", nerf("{S}/scene"), "differs",
    setup=scene_edit(lambda m, d: png("scene/train/r_1.png", np.zeros((16, 16, 4), np.uint8))(d.parent, None)))
cli("scene image with signed pixels", nerf("{S}/scene"), "signed",
    setup=scene_edit(lambda m, d: tiff("scene/train/r_0.tif", np.zeros((12, 12, 3), np.int16),
                                       photometric="rgb")(d.parent, None)
                     or m["frames"][0].update(file_path="./train/r_0.tif")))
cli("scene transforms is a FIFO", nerf("{S}/scene"), "FIFO",
    setup=scene_edit(lambda m, d: ((d / "transforms_test.json").unlink(), os.mkfifo(d / "transforms_test.json"))
                     and None))
cli("scene folder missing", nerf("{S}/nowhere"), "does not exist")
cli("scene folder is a file", nerf("{S}/notes.txt"), "not a directory")
cli("scene --downscale not dividing", nerf("{SC}", "--downscale", "5"), "not divisible by downscale 5")

# -- checkpoints (image-render and the loaders) -----------------------------------------------------
cli("render checkpoint missing", render("{S}/missing.pt"), "not found")
cli("render checkpoint is a folder", render("{S}/kept"), "a directory")
cli("render checkpoint /dev/zero", render("/dev/zero"), "character device")
cli("render checkpoint FIFO", render("{S}/pipe.pt"), "FIFO", setup=fifo("pipe.pt"), sub=True)
cli("render checkpoint empty", render("{S}/bad.pt"), "cannot read checkpoint", setup=write_bytes("bad.pt", b""))
cli("render checkpoint truncated", render("{S}/bad.pt"), "cannot read checkpoint",
    setup=ck_bytes("ck", lambda b: b[: len(b) // 2]))
cli("render checkpoint random bytes", render("{S}/bad.pt"), "cannot read checkpoint",
    setup=write_bytes("bad.pt", bytes(range(256)) * 8))
cli("render checkpoint pickle with code (torch)", render("{S}/evil.pt"), "posix.system", setup=evil_torch())
cli("render checkpoint pickle with code (plain)", render("{S}/evil.pt"), "UnpicklingError", setup=evil_pickle(),
    sub=True)
cli("render checkpoint of a NeRF", render("{NCK}"), "not a gridfield image checkpoint")
cli("render checkpoint a list", render("{S}/bad.pt"), "not a gridfield image checkpoint",
    setup=ck_edit("ck", lambda ck: [1, 2, 3]))
cli("render checkpoint without spec", render("{S}/bad.pt"), "'spec'", setup=ck_edit("ck", del_key("spec")))
cli("render checkpoint without state_dict", render("{S}/bad.pt"), "'state_dict'",
    setup=ck_edit("ck", del_key("state_dict")))
cli("render checkpoint without shape", render("{S}/bad.pt"), "'shape'", setup=ck_edit("ck", del_key("shape")))
cli("render checkpoint spec a string", render("{S}/bad.pt"), "'spec'",
    setup=ck_edit("ck", set_key("spec", value="dense")))
cli("render checkpoint shape 2-D", render("{S}/bad.pt"), "'shape'",
    setup=ck_edit("ck", set_key("shape", value=[32, 32])))
cli("render checkpoint shape negative", render("{S}/bad.pt"), "'shape'",
    setup=ck_edit("ck", set_key("shape", value=[-32, 32, 1])))
cli("render checkpoint spec for 90 GB", render("{S}/bad.pt"), "spec describes",
    setup=ck_edit("ck", set_key("spec", "grid_kwargs", "resolutions", value=150_000)))
cli("render checkpoint spec unknown model", render("{S}/bad.pt"), "spec",
    setup=ck_edit("ck", set_key("spec", "model", value="nosuchgrid")))
cli("render checkpoint spec unknown key", render("{S}/bad.pt"), "spec",
    setup=ck_edit("ck", set_key("spec", "grid_kwargs", value={"resolutions": 54, "warp": 9})))
cli("render checkpoint non-finite weights", render("{S}/bad.pt"), "non-finite", setup=ck_edit("ck", nan_weights))
cli("render checkpoint missing weight", render("{S}/bad.pt"), "missing grid.features",
    setup=ck_edit("ck", set_key("state_dict", value={})))
cli("render checkpoint weight of wrong shape", render("{S}/bad.pt"), "shape of grid.features",
    setup=ck_edit("ck", set_key("state_dict", "grid.features", value=lambda t: t[:10])))
cli("render checkpoint weight not a tensor", render("{S}/bad.pt"), "not a tensor",
    setup=ck_edit("ck", set_key("state_dict", "grid.features", value=[1.0, 2.0])))

# -- real captures, videos and meshes (#14) ---------------------------------------------------------------
cli("nerf folder of no known format", nerf("{S}/data"), "no scene found")
cli("nerf --format llff without poses_bounds", nerf("{SC}", "--format", "llff"), "poses_bounds.npy")
cli("nerf --test-every 1", nerf("{SC}", "--test-every", "1"), "--test-every must be >= 2")
cli("render unknown path", ["render", "{NCK}", "--path", "zigzag", "--out", "{S}/v.gif"], "--path must be orbit")
cli("render --frames 0", ["render", "{NCK}", "--frames", "0", "--out", "{S}/v.gif"], "--frames must be >= 1")
cli("render --out .avi", ["render", "{NCK}", "--out", "{S}/v.avi"], "must end in .mp4 or .gif")
cli("render missing path file", ["render", "{NCK}", "--path", "{S}/none.json", "--out", "{S}/v.gif"], "none.json")
cli("render path file of bad poses", ["render", "{NCK}", "--path", "{S}/p.json", "--out", "{S}/v.gif"],
    "camera 1 is not a 4x4", setup=lambda sb, art: (sb / "p.json").write_text(json.dumps([np.eye(4).tolist(), [1, 2]])))
cli("render image checkpoint", ["render", "{CK}", "--out", "{S}/v.gif"], "checkpoint")
cli("export-mesh --alpha 1.5", ["export-mesh", "{NCK}", "--alpha", "1.5", "--out", "{S}/m.ply"],
    "--alpha must be in (0, 1)")
cli("export-mesh --out .stl", ["export-mesh", "{NCK}", "--out", "{S}/m.stl"], "must end in .ply, .obj or .glb")
cli("export-mesh --resolution 4", ["export-mesh", "{NCK}", "--resolution", "4", "--out", "{S}/m.ply"], "--resolution")

# -- memory ---------------------------------------------------------------------------------------------
cli("render 10^12 pixels", render("{CK}", "--height", "1000000", "--width", "1000000", "--out", "{S}/big.png"),
    "--height 1000000 --width 1000000", sub=True)
cli("render 10^6 x default aspect", render("{CK}", "--width", "10000000", "--out", "{S}/big.png"), "--width")
cli("nerf --resolution 100000", nerf("{SC}", "--resolution", "100000"), "--resolution 100000")
cli("nerf --occ-resolution 100000", nerf("{SC}", "--occ-resolution", "100000"), "--occ-resolution 100000")
cli("make-scene --size 100000", [*SCENE, "--size", "100000"], "--size 100000", sub=True)
cli("make-scene --supersample 10000", [*SCENE, "--size", "128", "--supersample", "10000"], "--supersample")
cli("sdf --iou-resolution 100000", [*SDF, "--iou-resolution", "100000"], "--iou-resolution 100000")
cli("sdf --mesh-resolution 100000", [*SDF, "--mesh-resolution", "100000"], "--mesh-resolution 100000")
cli("sdf --samples 10^12", [*SDF, "--samples", str(10**12)], "--samples")
cli("image header of 10^10 pixels", [*IMG[:1], "{S}/huge.png", *IMG[2:], "--max-size", "None"], "huge.png",
    setup=png_header("huge.png", 100_000, 100_000))
cli("gtk-bound-map --resolution 100000", [*BOUND, "--resolution", "100000"], "resolution")
cli("gtk-spectra --n1d 10^7", [*SPECTRA, "--n1d", "10000000"], "n1d")

# -- numeric options: image ------------------------------------------------------------------------------
for opt, vals in {"--steps": ["0", "-1"], "--time-budget": [NAN, INF, "0", "-1"],
                  "--lr-grid": [NAN, INF, "0", "-1"], "--lr-other": [NAN, "-1"], "--batch-size": ["0", "-1"],
                  "--holdout": [NAN, "-0.1", "1"], "--eval-every": ["0"], "--max-size": ["4"],
                  "--param-budget": ["0"], "--checkpoint-every": ["-1"]}.items():
    for v in vals:
        cli(f"image {opt} {v}", [*IMG, opt, v], opt)
cli("image --steps not a number", [*IMG, "--steps", "many"], "--steps")
cli("image --seed nan", [*IMG, "--seed", NAN], "--seed")
cli("image unknown model", [*IMG, "--model", "nosuch"], "nosuch")
cli("image unknown decoder", [*IMG, "--decoder", "transformer"], "--decoder")
cli("image identity decoder needs colours", ["image", "astronaut", *IMG[2:], "--model", "hash", "--decoder",
                                             "identity"], "decoder")
cli("image unknown holdout pattern", [*IMG, "--holdout-pattern", "diagonal"], "--holdout-pattern")
cli("image unknown backend", [*IMG, "--backend", "gpu"], "--backend")
cli("image unknown device", [*IMG, "--device", "nosuchdevice"], "nosuchdevice")
cli("image meta device", [*IMG, "--device", "meta"], "meta")
cli("image --seed -1", [*IMG, "--seed", "-1"], "--seed")
cli("sdf --seed 2^70", [*SDF, "--seed", str(2**70)], "--seed")
cli("image unknown option", [*IMG, "--no-such-option", "3"], "--no-such-option", sub=True)
cli("unknown subcommand", ["paint", "--out", "{S}/out"], "paint")
cli("image --resume without a state", [*IMG, "--resume"], "--resume")

# -- numeric options: sdf ----------------------------------------------------------------------------------
for opt, vals in {"--steps": ["0"], "--time-budget": [NAN, "-1"], "--lr-grid": ["-1", INF], "--lr-other": [NAN],
                  "--batch-size": ["0"], "--samples": ["10"], "--eikonal": [NAN, "-1", INF],
                  "--sigma": ["0", NAN, INF, "-0.01"], "--iou-resolution": ["0"], "--mesh-resolution": ["-8"],
                  "--iou-points": ["0"], "--chamfer-points": ["0"], "--eval-every": ["0"],
                  "--param-budget": ["10"]}.items():
    for v in vals:
        cli(f"sdf {opt} {v}", [*SDF, opt, v], opt)
cli("sdf --ratio all zero", [*SDF, "--ratio", "0", "0", "0"], "--ratio")
cli("sdf --ratio nan", [*SDF, "--ratio", NAN, "1", "1"], "--ratio")
cli("sdf --ratio negative", [*SDF, "--ratio", "-1", "1", "1"], "--ratio")
cli("sdf unknown model", [*SDF, "--model", "nosuch"], "nosuch")
cli("sdf unknown loss", [*SDF, "--loss", "l3"], "--loss")

# -- numeric options: nerf ---------------------------------------------------------------------------------
for opt, vals in {"--steps": ["0"], "--time-budget": [INF, "0"], "--lr-grid": ["-1", NAN], "--lr-other": [INF],
                  "--batch-rays": ["0", "-5"], "--test-views": ["0"], "--resolution": ["2"],
                  "--occ-resolution": ["0"], "--occ-every": ["0"], "--occ-start": ["-1"],
                  "--step-ratio": [NAN, "0"], "--aabb-scale": [INF, "-1"], "--tv-weight": ["-1", NAN],
                  "--distortion-weight": ["-1", INF],
                  "--alpha-init": ["0", "1", NAN], "--downscale": ["0"], "--save-renders": ["-1"],
                  "--turntable-frames": ["-1"]}.items():
    for v in vals:
        cli(f"nerf {opt} {v}", nerf("{SC}", opt, v), opt)
cli("nerf unknown model", nerf("{SC}", "--model", "nosuch"), "nosuch")
cli("nerf unknown appearance", nerf("{SC}", "--appearance", "phong"), "--appearance")
cli("nerf no scene", ["nerf", *NERF_OPTS], "SCENE_DIR")

# -- numeric options: make-scene -----------------------------------------------------------------------------
for opt, vals in {"--views": ["0"], "--test-views": ["0"], "--size": ["2"], "--supersample": ["0"],
                  "--distance": [NAN, INF, "0", "-4", "0.5"]}.items():
    for v in vals:
        cli(f"make-scene {opt} {v}", [*SCENE, opt, v], opt)

# -- inputs: images, meshes, special files -------------------------------------------------------------------
IMG_AT = lambda path: ["image", path, *IMG[2:]]  # noqa: E731
cli("image missing", IMG_AT("{S}/missing.png"), "not found")
cli("image unknown builtin", IMG_AT("nosuch_builtin"), "nosuch_builtin")
cli("image is a folder", IMG_AT("{S}/kept"), "directory")
cli("image /dev/zero", IMG_AT("/dev/zero"), "character device")
cli("image FIFO", IMG_AT("{S}/pipe.png"), "FIFO", setup=fifo("pipe.png"))
cli("image empty file", IMG_AT("{S}/empty.png"), "cannot read image", setup=write_bytes("empty.png", b""))
cli("image garbage", IMG_AT("{S}/junk.png"), "cannot read image", setup=write_bytes("junk.png", b"\x89PNG junk"))
cli("image truncated PNG", IMG_AT("{S}/cut.png"), "cannot read image",
    setup=lambda sb, art: (sb / "cut.png").write_bytes((art["root"] / "img" / "error_map.png").read_bytes()[:900]))
cli("image too small", IMG_AT("{S}/tiny.png"), "too small", setup=png("tiny.png", np.zeros((4, 4, 3), np.uint8)))
cli("image NaN pixels", IMG_AT("{S}/nan.tif"), "NaN",
    setup=tiff("nan.tif", np.where(np.eye(16) > 0, np.nan, 0.5).astype(np.float32)))
cli("image inf pixels", IMG_AT("{S}/inf.tif"), "infinite",
    setup=tiff("inf.tif", np.where(np.eye(16) > 0, np.inf, 0.5).astype(np.float32)))
cli("image signed 16-bit", IMG_AT("{S}/signed.tif"), "signed", setup=tiff("signed.tif", np.zeros((16, 16), np.int16)))
cli("image complex samples", IMG_AT("{S}/complex.tif"), "complex.tif",
    setup=tiff("complex.tif", np.zeros((16, 16), np.complex64)))
cli("image CMYK TIFF", IMG_AT("{S}/cmyk.tif"), "colour space",
    setup=tiff("cmyk.tif", np.zeros((16, 16, 4), np.uint8), photometric="separated"))
cli("image 5 channels", IMG_AT("{S}/five.tif"), "shape",
    setup=tiff("five.tif", np.zeros((16, 16, 5), np.uint8), photometric="minisblack", planarconfig="contig"))
cli("image text file", IMG_AT("{S}/notes.txt"), "cannot read image")
MESH_AT = lambda path: ["sdf", path, *SDF[1:]]  # noqa: E731
cli("mesh missing", MESH_AT("{S}/missing.obj"), "missing.obj")
cli("mesh /dev/zero", MESH_AT("/dev/zero"), "character device")
cli("mesh FIFO", MESH_AT("{S}/pipe.obj"), "FIFO", setup=fifo("pipe.obj"))
cli("mesh folder", MESH_AT("{S}/kept"), "directory")
cli("mesh garbage OBJ", MESH_AT("{S}/junk.obj"), "junk.obj", setup=write_bytes("junk.obj", b"v 1 2\nf 9 9 9\n"))
cli("mesh without faces", MESH_AT("{S}/points.obj"), "points.obj",
    setup=write_bytes("points.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\n"))
cli("mesh unknown builtin", MESH_AT("nosuch_shape"), "nosuch_shape")
cli("make-scene mesh FIFO", ["make-scene", "{S}/pipe.ply", *SCENE[1:]], "FIFO", setup=fifo("pipe.ply"))
cli("make-scene mesh missing", ["make-scene", "{S}/missing.ply", *SCENE[1:]], "missing.ply")

# -- the analyses --------------------------------------------------------------------------------------------------
cli("gtk-spectra unknown model", [*SPECTRA, "--models", "nosuch"], "nosuch")
cli("gtk-spectra --n1d 2", [*SPECTRA, "--n1d", "2"], "n1d")
cli("gtk-spectra --side2d 1000", [*SPECTRA, "--side2d", "1000"], "side2d")
cli("gtk-spectra unknown decoder", [*SPECTRA, "--decoder", "transformer"], "transformer")
cli("gtk-bound-map --seeds 0", [*BOUND, "--seeds", "0"], "seeds")
cli("gtk-bound-map --resolution 1", [*BOUND, "--resolution", "1"], "resolution")
cli("gtk-bound-map --ridge nan", [*BOUND, "--ridge", NAN], "ridge")
cli("gtk-bound-map --x1 nan", [*BOUND, "--x1", NAN, "0"], "x1")
cli("gtk-bound-map --x1 outside", [*BOUND, "--x1", "5", "5"], "x1")
cli("gtk-bound-map --x2 outside", [*BOUND, "--x2", "0.1", "-3"], "--x2")
cli("gtk-bound-map unknown decoder", [*BOUND, "--decoder", "transformer"], "transformer")
cli("gtk-error-maps --steps 0", [*ERRMAPS, "--steps", "0"], "steps")
cli("gtk-error-maps --max-size 4", [*ERRMAPS, "--max-size", "4"], "max")
cli("gtk-error-maps --lr-grid nan", [*ERRMAPS, "--lr-grid", NAN], "lr")
cli("gtk-error-maps --lr-other -1", [*ERRMAPS, "--lr-other", "-1"], "lr")
cli("gtk-error-maps image missing", [*ERRMAPS, "--image", "{S}/missing.png"], "missing.png")
cli("gtk-error-maps image /dev/zero", [*ERRMAPS, "--image", "/dev/zero"], "character device")
cli("gtk-error-maps unknown model", [*ERRMAPS, "--models", "nosuch"], "nosuch")
cli("gtk-theory --side 2", [*THEORY, "--side", "2"], "side")
cli("gtk-theory --holdout 0", [*THEORY, "--holdout", "0"], "holdout")
cli("gtk-theory --holdout nan", [*THEORY, "--holdout", NAN], "holdout")
cli("gtk-theory --gd-steps 0", [*THEORY, "--gd-steps", "0"], "steps")
cli("gtk-theory --image-size 2", [*THEORY, "--image-size", "2"], "size")
cli("gtk-theory unknown fit model", [*THEORY, "--fit-models", "nosuch"], "nosuch")
cli("gtk-theory image FIFO", [*THEORY, "--image", "{S}/pipe.png"], "FIFO", setup=fifo("pipe.png"))

# -- view and report (#16) --------------------------------------------------------------------------------------------
cli("report input missing", ["report", "{S}/nowhere", "--out", "{S}/r.html"], "nowhere")
cli("report a foreign folder", ["report", "{S}/kept", "--out", "{S}/r.html"], "not a gridfield output folder")
cli("report --out .", ["report", "{S}/prev", "--out", "."], "--out")
cli("view checkpoint missing", ["view", "{S}/missing.pt"], "missing.pt")
cli("view checkpoint /dev/zero", ["view", "/dev/zero"], "character device")
cli("view --port -1", ["view", "{CK}", "--port", "-1"], "--port")

# -- the Python API -------------------------------------------------------------------------------------------------
def _load_image(path, **kw):
    from gridfield.data.images import load_image
    return lambda sb, art: load_image(path.format(S=sb), **kw)


def _load_blender(path="{S}/scene", *a, **kw):
    from gridfield.data.blender import load_blender
    return lambda sb, art: load_blender(path.format(S=sb, SC=art["scene"]), *a, **kw)


def _image_ck(path="{S}/bad.pt"):
    from gridfield.tasks.image import load_checkpoint
    return lambda sb, art: load_checkpoint(path.format(S=sb, NCK=art["nck"], SCK=art["sck"]))


def _sdf_ck(path="{S}/bad.pt"):
    from gridfield.tasks.sdf import load_sdf_checkpoint
    return lambda sb, art: load_sdf_checkpoint(path.format(S=sb, CK=art["ck"], NCK=art["nck"]))


def _nerf_ck(path="{S}/bad.pt"):
    from gridfield.tasks.nerf import load_nerf
    return lambda sb, art: load_nerf(path.format(S=sb, CK=art["ck"], SCK=art["sck"]))


api("load_image /dev/zero", _load_image("/dev/zero"), "character device")
api("load_image FIFO", _load_image("{S}/pipe.png"), "FIFO", setup=fifo("pipe.png"))
api("load_image folder", _load_image("{S}/kept"), "directory")
api("load_image NaN", _load_image("{S}/nan.tif"), "NaN", setup=tiff("nan.tif", np.full((16, 16), np.nan, np.float32)))
api("load_image max_size 0", _load_image("camera", max_size=0), "max_size")
api("load_image max_size nan", _load_image("camera", max_size=math.nan), "max_size")
api("load_image huge header", _load_image("{S}/huge.png"), "huge.png", setup=png_header("huge.png", 200_000, 200_000))
api("load_image 16-bit signed", _load_image("{S}/s.tif"), "signed",
    setup=tiff("s.tif", np.ones((16, 16, 3), np.int16), photometric="rgb"))
api("load_blender zero pose", _load_blender(), "transform_matrix", setup=pose(lambda m: 0 * m))
api("load_blender camera_angle_x string", _load_blender(), "camera_angle_x", setup=meta_set(camera_angle_x="60"))
api("load_blender fl_x 0", _load_blender(), "fl_x", setup=meta_set(fl_x=0.0))
api("load_blender missing image", _load_blender(), "not found",
    setup=scene_edit(lambda m, d: (d / "train" / "r_2.png").unlink()))
api("load_blender unknown split", _load_blender("{SC}", "validation"), "transforms_validation.json")
api("load_blender downscale 0", _load_blender("{SC}", "train", 0), "downscale")
api("load_blender downscale 1.5", _load_blender("{SC}", "train", 1.5), "downscale")
api("load_blender near nan", _load_blender("{SC}", "train", 1, near=math.nan), "near")
api("load_blender near > far", _load_blender("{SC}", "train", 1, near=6.0, far=2.0), "near")
api("load_checkpoint truncated", _image_ck(), "cannot read checkpoint", setup=ck_bytes("ck", lambda b: b[:-100]))
api("load_checkpoint pickle with code", _image_ck("{S}/evil.pt"), "cannot read checkpoint", setup=evil_torch())
api("load_checkpoint of an SDF", _image_ck("{SCK}"), "not a gridfield image checkpoint")
api("load_checkpoint spec for 90 GB", _image_ck(), "spec describes",
    setup=ck_edit("ck", set_key("spec", "grid_kwargs", "resolutions", value=150_000)))
api("load_checkpoint spec kind wrong", _image_ck(), "spec",
    setup=ck_edit("ck", set_key("spec", "kind", value="radiance")))
api("load_checkpoint non-finite weights", _image_ck(), "non-finite", setup=ck_edit("ck", nan_weights))
api("load_sdf_checkpoint missing normalization", _sdf_ck(), "'normalization'",
    setup=ck_edit("sck", del_key("normalization")))
api("load_sdf_checkpoint scale 0", _sdf_ck(), "normalization",
    setup=ck_edit("sck", set_key("normalization", "scale", value=0.0)))
api("load_sdf_checkpoint center 2-D", _sdf_ck(), "normalization",
    setup=ck_edit("sck", set_key("normalization", "center", value=[0.0, 0.0])))
api("load_sdf_checkpoint missing spec", _sdf_ck(), "'spec'", setup=ck_edit("sck", del_key("spec")))
api("load_sdf_checkpoint non-finite weights", _sdf_ck(), "non-finite", setup=ck_edit("sck", nan_weights))
api("load_sdf_checkpoint of an image", _sdf_ck("{CK}"), "not a gridfield SDF checkpoint")
api("load_sdf_checkpoint pickle with code", _sdf_ck("{S}/evil.pt"), "cannot read checkpoint",
    setup=evil_torch(fmt="gridfield.sdf/1"))
api("load_nerf of an image", _nerf_ck("{CK}"), "NeRF")
api("load_nerf missing settings", _nerf_ck(), "settings", setup=ck_edit("nck", del_key("settings")))
api("load_nerf unknown setting", _nerf_ck(), "unknown render settings",
    setup=ck_edit("nck", set_key("settings", "warp_speed", value=9)))
api("load_nerf missing camera", _nerf_ck(), "camera", setup=ck_edit("nck", del_key("camera")))
api("load_nerf camera radius nan", _nerf_ck(), "camera",
    setup=ck_edit("nck", set_key("camera", "radius", value=math.nan)))
api("load_nerf occupancy not a cube", _nerf_ck(), "occupancy",
    setup=ck_edit("nck", set_key("occupancy", "ema", value=lambda t: t[:100])))
api("load_nerf occupancy box inverted", _nerf_ck(), "occupancy box",
    setup=ck_edit("nck", set_key("occupancy", "aabb", value=lambda t: t.flip(0))))
api("load_nerf spec for 100 GB", _nerf_ck(), "spec describes",
    setup=ck_edit("nck", set_key("spec", "color", "kwargs", "resolutions", value=[1200])))
api("load_nerf missing weight", _nerf_ck(), "missing",
    setup=ck_edit("nck", set_key("state_dict", value=lambda s: {k: v for k, v in s.items() if "head" not in k})))
api("load_nerf non-finite weights", _nerf_ck(), "non-finite", setup=ck_edit("nck", nan_weights))
api("load_nerf truncated", _nerf_ck(), "cannot read checkpoint", setup=ck_bytes("nck", lambda b: b[:1000]))


def _presets(fn: str, *a, **kw):
    from gridfield import presets
    return lambda sb, art: getattr(presets, fn)(*a, **kw)


api("presets.get unknown task", _presets("get", "video", "dense"), "video")
api("presets.get unknown model", _presets("get", "image", "nosuch"), "nosuch")
api("presets.get unknown option", _presets("get", "image", "dense", warp=3), "warp")
api("presets.get param_budget 0", _presets("get", "image", "dense", param_budget=0), "param_budget")
api("presets.get nerf resolution 0", _presets("get", "nerf", "dense", resolution=0), "resolution")
api("presets.get unknown decoder", _presets("get", "sdf", "dense", decoder="transformer"), "transformer")
api("presets.spec_from_dict not a dict", _presets("spec_from_dict", "dense"), "dict")
api("presets.spec_from_dict unknown kind", _presets("spec_from_dict", {"kind": "nope"}), "nope")
api("presets.spec_from_dict missing keys", _presets("spec_from_dict", {"kind": "field", "model": "dense"}), "in_dim")
api("presets.spec_from_dict model a number",
    _presets("spec_from_dict", {"kind": "field", "model": 5, "in_dim": 2, "out_dim": 1, "decoder": "linear",
                                "decoder_kwargs": None, "grid_kwargs": {}}), "model")
api("presets.spec_from_dict in_dim string",
    _presets("spec_from_dict", {"kind": "field", "model": "dense", "in_dim": "2", "out_dim": 1, "decoder": "linear",
                                "decoder_kwargs": None, "grid_kwargs": {}}), "in_dim")


def _gtk(x, **kw):
    def call(sb, art):
        from gridfield.gtk import gtk
        from gridfield.models import build_field

        torch.manual_seed(0)
        f = build_field("dense", in_dim=2, out_dim=1, decoder="linear", resolutions=8).double()
        return gtk(f, x() if callable(x) else x, **kw)
    return call


api("gtk points with NaN", _gtk(lambda: torch.tensor([[0.1, math.nan], [0.2, 0.3]], dtype=torch.float64)), "NaN")
api("gtk points of the wrong dimension", _gtk(lambda: torch.zeros(4, 3, dtype=torch.float64)), "[N, 2]")
api("gtk points outside", _gtk(lambda: torch.full((4, 2), 7.0, dtype=torch.float64)), "[-1, 1]")
api("gtk empty points", _gtk(lambda: torch.zeros(0, 2, dtype=torch.float64)), "empty")
api("gtk points a list", _gtk([[0.1, 0.2]]), "torch.Tensor")
api("gtk unknown implementation", _gtk(lambda: torch.zeros(4, 2, dtype=torch.float64), implementation="magic"),
    "magic")
api("gtk reference at n = 200000", _gtk(lambda: torch.rand(200_000, 2, dtype=torch.float64) * 2 - 1,
                                        implementation="reference"), "would need")


def _out(target, **kw):
    from gridfield.outdir import check_out_dir
    return lambda sb, art: check_out_dir(target.format(S=sb), **kw)


api("check_out_dir .", _out("."), "current directory")
api("check_out_dir empty", _out(""), "empty")
api("check_out_dir ..", _out(".."), "current directory")
api("check_out_dir foreign", _out("{S}/kept"), "did not write")
api("check_out_dir previous + added", _out("{S}/prev"), "added.txt")
api("check_out_dir below a file", _out("{S}/notes.txt/x"), "which is a file")
api("check_out_dir a file", _out("{S}/notes.txt", option="--scene-out"), "--scene-out")
api("check_out_dir a FIFO", _out("{S}/pipe"), "not a directory", setup=fifo("pipe"))
api("check_out_dir read-only fs", _out("/proc/gridfield-out"), "cannot write")


def _make_scene(**kw):
    def call(sb, art):
        from gridfield.data.scene_maker import make_scene
        args = {"views": 2, "test_views": 1, "size": 8, "supersample": 1} | kw
        return make_scene("torus_knot", sb / "out", **args)
    return call


api("make_scene views 0", _make_scene(views=0), "views")
api("make_scene views 2.5", _make_scene(views=2.5), "views")
api("make_scene distance nan", _make_scene(distance=math.nan), "distance")
api("make_scene distance inside the object", _make_scene(distance=0.5), "distance")
api("make_scene size 10^6", _make_scene(size=1_000_000), "--size")


# ------------------------------------------------------------------------------------------------
# Running a case
# ------------------------------------------------------------------------------------------------
def _fill(s: str, sb: Path, art: dict) -> str:
    return s.format(S=sb, CK=art["ck"], NCK=art["nck"], SCK=art["sck"], SC=art["scene"])


def _argv(case: Case, sb: Path, art: dict) -> list[str]:
    argv = [_fill(a, sb, art) for a in case.argv]
    if "--out" not in argv and argv[0] != "view":
        argv += ["--out", str(sb / ("out.png" if argv[0] == "image-render" else "out"))]
    return argv


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, art, tmp_path, monkeypatch, capsys):
    sb = tmp_path / "sandbox"
    user_files(sb)
    if case.setup is not None:
        case.setup(sb, art)
    for k, v in case.env.items():
        monkeypatch.setenv(k, _fill(v, sb, art))
    monkeypatch.chdir(sb)
    before, shared = snapshot(sb), snapshot(art["root"])
    if case.call is not None:
        with pytest.raises(case.exc) as info:
            case.call(sb, art)
        assert isinstance(info.value, ValueError)
        msg = str(info.value)
        assert case.expect in msg, msg
    else:
        argv = _argv(case, sb, art)
        if case.sub:
            if not EXE.exists():
                pytest.skip(f"console script not installed at {EXE}")
            env = {**os.environ, "OMP_NUM_THREADS": "1", **{k: _fill(v, sb, art) for k, v in case.env.items()}}
            r = subprocess.run([str(EXE), *argv], capture_output=True, text=True, env=env, timeout=120, cwd=sb)
            code, out, err = r.returncode, r.stdout, r.stderr
        else:
            capsys.readouterr()
            code = main(argv)
            out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2, (code, err[-2000:])
        assert "Traceback" not in err + out, err[-2000:]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert case.expect in lines[0], lines[0]
    assert snapshot(sb) == before
    assert snapshot(art["root"]) == shared


def test_table_size():
    cli_cmds = {c.argv[0] for c in CASES if c.argv}
    assert cli_cmds >= {"image", "image-render", "sdf", "make-scene", "nerf", "gtk-spectra", "gtk-bound-map",
                        "gtk-error-maps", "gtk-theory"}
    assert len(CASES) >= 110 and sum(c.call is not None for c in CASES) >= 40


# ------------------------------------------------------------------------------------------------
# Interrupts: SIGINT and SIGTERM to a real process of every long command while it works
# ------------------------------------------------------------------------------------------------
BUSY_STEPS = ["--steps", "1000000", "--checkpoint-every", "2"]
LONG = {  # command -> (argv, what shows it is busy: "state" = a saved training state, "tmp" = its temp folder)
    "image": ([*IMG, *BUSY_STEPS, "--max-size", "64"], "state"),
    "sdf": ([*SDF, *BUSY_STEPS], "state"),
    "nerf": ([*nerf("{SC}"), *BUSY_STEPS], "state"),
    "make-scene": (["make-scene", "--views", "100000", "--test-views", "1", "--size", "16", "--supersample", "1"],
                   "tmp"),
    "gtk-error-maps": ([*ERRMAPS, "--steps", "1000000"], "tmp"),
}


def _wait(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited with {proc.returncode} before {what}: {err[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            proc.communicate()
            pytest.fail(f"not {what} after {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", list(LONG))
def test_interrupt_leaves_nothing(command, sig, art, tmp_path):
    if not EXE.exists():
        pytest.skip(f"console script not installed at {EXE}")
    sb = tmp_path / "sandbox"
    user_files(sb)
    states = tmp_path / "states"
    states.mkdir()
    argv, busy = LONG[command]
    argv = [*[_fill(a, sb, art) for a in argv], "--out", str(sb / "out")]
    before = snapshot(sb)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRIDFIELD_STATE_DIR": str(states)}
    proc = subprocess.Popen([str(EXE), *argv], cwd=sb, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        if busy == "state":
            _wait(lambda: any(states.iterdir()), proc, 120, "training (no saved state)")
        else:
            _wait(lambda: any(p.name.startswith(".out.tmp-") for p in sb.iterdir()), proc, 120, "writing")
            time.sleep(0.3)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = err.strip().splitlines()
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert "Traceback" not in out + err, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("interrupted"), err
    assert "no output was written" in lines[0]
    if busy == "state":
        assert "--resume" in lines[0] and any(states.iterdir())
    assert not (sb / "out").exists()
    assert snapshot(sb) == before  # no temporary folder left beside --out, the user's files untouched


# ------------------------------------------------------------------------------------------------
# Data loss: the user's files around and inside the target survive every command
# ------------------------------------------------------------------------------------------------
RUNS = {"image": IMG, "image-render": render("{CK}"), "sdf": SDF, "make-scene": SCENE, "nerf": nerf("{SC}"),
        "gtk-spectra": SPECTRA, "gtk-bound-map": BOUND, "gtk-error-maps": ERRMAPS, "gtk-theory": THEORY}


def _mine(sb: Path) -> Path:
    """The user's folder ``sb/mine``: loose files, a sub-folder, a hidden file, a link and a previous run's
    name taken by a user file."""
    mine = sb / "mine"
    (mine / "photos").mkdir(parents=True)
    (mine / "photos" / "cat.png").write_bytes(b"\x89PNG not really a cat")
    (mine / "thesis.tex").write_text("\\documentclass{article}")
    (mine / ".hidden").write_text("secret")
    (mine / "metrics.json").write_text('{"mine": true}')
    (mine / "link").symlink_to("thesis.tex")
    return mine


@pytest.mark.parametrize("command", list(RUNS))
def test_user_files_survive_every_command(command, art, tmp_path, monkeypatch, capsys):
    sb = tmp_path / "sandbox"
    user_files(sb)
    mine = _mine(sb)
    argv = [_fill(a, sb, art) for a in RUNS[command]]
    before = snapshot(sb)
    png = command == "image-render"
    for cwd, out in ((mine, "."), (sb, "mine"), (sb, str(mine)), (mine / "photos", ".."), (sb, "mine/")):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main([*argv, "--out", out])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "--out" in err[0], (out, err)
        assert snapshot(sb) == before, (cwd, out)
    # a new output inside the user's folder, then replacing it: only gridfield's own files change
    monkeypatch.chdir(sb)
    target = "mine/run" + (".png" if png else "")
    for _ in range(2):
        assert main([*argv, "--out", target]) == 0
        after = snapshot(sb)
        new = {k for k in after if k not in before}
        assert {k: after[k] for k in before} == before
        assert new and all(k == target or k.startswith(target + "/") for k in new), sorted(new)
