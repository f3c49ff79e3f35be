"""``gridfield view``: the pictures against the tasks' own renderers, then the page in a real browser.

Without a browser: the viewer's pure render functions (:mod:`gridfield.viewer.frames`) reproduce the
tasks' outputs pixel for pixel (an image view at zoom 1 is ``render_image``; a NeRF view of a test
camera is the run's ``test_000.png`` / ``depth_000.png``; the SDF mesh is the run's ``mesh.ply``), the
camera conversions agree with scipy's rotations, and the progressive schedule previews while moving.

In headless Chromium (``tests/_browser.py``; skipped without a browser, failed under ``CI=true``): the
viewer runs on a free loopback port, the test waits for the first full frame, takes a screenshot of
the 3D canvas alone and compares it, block by block, with a picture rendered independently by the
task's renderer for the camera the browser reported, and checks it is not a blank page. The image
view runs as a user runs it (``gridfield view`` in a subprocess, Ctrl-C -> exit 130).

The fast paths are tested elsewhere; here ``GRIDFIELD_FAST=0`` keeps the tests free of compilation.
"""

from __future__ import annotations

import importlib.util
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from _browser import block_means, canvas_pixels, chrome
from gridfield.cli import main
from gridfield.errors import InputError
from gridfield.render import outputs
from gridfield.render.rays import Intrinsics, camera_rays, look_at, orbit_poses, pixel_directions
from gridfield.viewer import frames
from gridfield.viewer.cameras import ViewCamera, frustum_pose, matrix_to_quat, quat_to_matrix
from gridfield.viewer.progressive import FULL, PREVIEW, Progressive
from gridfield.viewer.scenes import checkpoint_kind, load_scene

pytest.importorskip("trimesh")  # the SDF run and the scene maker need the mesh extra
if importlib.util.find_spec("viser") is None:  # the view extra; `make` installs it, so CI must have it
    if os.environ.get("CI", "").lower() == "true":
        raise ImportError("viser is not installed (pip install '.[view]'); CI=true: the viewer tests must run")
    pytest.skip("viser is not installed: pip install '.[view]'", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGE = ["image", "camera", "--max-size", "32", "--steps", "30", "--no-progress", "--checkpoint-every", "0"]
NERF = ["--resolution", "16", "--batch-rays", "256", "--occ-resolution", "8", "--turntable-frames", "0",
        "--no-white-background", "--steps", "200", "--no-progress", "--checkpoint-every", "0"]
SDF = ["sdf", "--model", "dense", "--param-budget", "5000", "--samples", "20000", "--iou-resolution", "16",
       "--iou-points", "1000", "--mesh-resolution", "16", "--chamfer-points", "1000", "--batch-size", "1024",
       "--steps", "30", "--no-progress", "--checkpoint-every", "0"]


@pytest.fixture(scope="module", autouse=True)
def _reference_paths():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRIDFIELD_FAST", "0")
        yield


@pytest.fixture(scope="module")
def art(tmp_path_factory, _reference_paths) -> dict[str, Path]:
    """One tiny run of each task (image, NeRF on a 12-pixel torus-knot scene, SDF)."""
    from gridfield.data.scene_maker import make_scene

    root = tmp_path_factory.mktemp("viewer")
    torch.set_num_threads(1)
    assert main([*IMAGE, "--out", str(root / "img")]) == 0
    scene = make_scene("torus_knot", root / "scene", views=4, test_views=2, size=12)
    assert main(["nerf", str(scene), *NERF, "--out", str(root / "nerf")]) == 0
    assert main([*SDF, "--out", str(root / "sdf")]) == 0
    return {"root": root, "scene": scene, "img": root / "img", "nerf": root / "nerf", "sdf": root / "sdf"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    a = iio.imread(path)
    return np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]


def gray3(t: torch.Tensor) -> np.ndarray:
    """``[H, W, 1]`` or ``[H, W, 3]`` floats -> uint8 RGB, rounded as the tasks write PNGs."""
    a = (t.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return np.repeat(a, 3, -1) if a.shape[-1] == 1 else a


def independent_c2w(cam: ViewCamera) -> torch.Tensor:
    """OpenGL camera-to-world of a viser camera, via scipy (x, y, z, w order) and the axis flip."""
    w, x, y, z = cam.wxyz
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix() @ np.diag([1.0, -1.0, -1.0])
    m[:3, 3] = cam.position
    return torch.from_numpy(m).float()


# ------------------------------------------------------------------------------------------------
# Cameras and the progressive schedule
# ------------------------------------------------------------------------------------------------
def test_quaternions_agree_with_scipy():
    rots = Rotation.random(50, random_state=0)
    for q_xyzw, m in zip(rots.as_quat(), rots.as_matrix()):
        wxyz = np.r_[q_xyzw[3], q_xyzw[:3]]
        np.testing.assert_allclose(quat_to_matrix(wxyz), m, atol=1e-12)
        q = matrix_to_quat(m)
        np.testing.assert_allclose(min(np.abs(q - wxyz).max(), np.abs(q + wxyz).max()), 0, atol=1e-9)


def test_a_viser_camera_becomes_the_renderers_camera():
    eye = torch.tensor([[3.0, -2.0, 1.5]])
    c2w = look_at(eye)[0]
    wxyz, pos = frustum_pose(c2w.numpy())
    cam = ViewCamera(tuple(pos), tuple(wxyz), fov=0.8, aspect=1.5)
    torch.testing.assert_close(cam.c2w(), c2w, atol=1e-6, rtol=0)
    torch.testing.assert_close(cam.c2w(), independent_c2w(cam), atol=1e-6, rtol=0)
    K = cam.intrinsics(60)
    assert (K.width, K.height) == (60, 40)
    o, d = camera_rays(cam.c2w(), K)  # the four central rays point at the origin (look_at's target)
    centre = d.reshape(40, 60, 3)[19:21, 29:31].reshape(-1, 3).mean(0)
    assert float(torch.nn.functional.cosine_similarity(centre, -eye[0], dim=0)) > 0.9999
    top = pixel_directions(K, torch.tensor([29.5]), torch.tensor([-0.5]))[0]  # the top edge, centre column
    assert math.isclose(math.atan2(float(top[1]), -float(top[2])), 0.4, rel_tol=1e-6)  # half the vertical fov


def test_progressive_previews_while_moving_and_renders_full_once_still():
    p = Progressive(settle=0.25)
    t = p.next(0.0)
    assert t.quality == FULL  # nothing shown yet, the view is still: full at once
    p.done(t)
    assert p.next(0.1) is None
    p.moved(1.0)
    t = p.next(1.05)
    assert t.quality == PREVIEW
    p.done(t)
    assert p.next(1.1) is None  # that preview is the current view; wait for the camera to settle
    p.moved(1.15)
    t = p.next(1.2)
    assert t.quality == PREVIEW and t.version > 1
    p.done(t)
    t = p.next(1.41)
    assert t.quality == FULL
    p.done(t)
    assert p.next(5.0) is None
    p.changed()  # a setting: full straight away, no preview
    assert p.next(5.01).quality == FULL
    stale = p.next(5.02)
    p.moved(5.03)  # the view changed while that picture was rendered: it does not count as current
    p.done(stale)
    assert p.next(5.04).quality == PREVIEW


# ------------------------------------------------------------------------------------------------
# The pictures, against the tasks' own renderers and output files
# ------------------------------------------------------------------------------------------------
def test_image_view_is_the_task_render(art):
    from gridfield.tasks.image import load_checkpoint, render_image

    ck = art["img"] / "checkpoint.pt"
    field, (H, W, C) = load_checkpoint(ck), (32, 32, 1)
    assert checkpoint_kind(ck) == "image" and load_scene(ck).shape == (H, W, C)
    assert np.array_equal(frames.image_frame(field, (H, W, C), W, H), gray3(render_image(field, H, W)))
    assert np.array_equal(frames.image_frame(field, (H, W, C), W, H), read_png(art["img"] / "reconstruction.png"))
    # a wider view: the image fills the middle 64 x 64, the rest is the background
    view = frames.image_frame(field, (H, W, C), 96, 64).astype(int)
    assert np.abs(view[:, 16:80] - gray3(render_image(field, 64, 64))).max() <= 1
    bg = np.round(np.array(frames.IMAGE_BACKGROUND) * 255)
    assert np.abs(view[:, :16] - bg).max() <= 1 and np.abs(view[:, 80:] - bg).max() <= 1
    # zoom 4 about (0.25, -0.5): pixel j sits at cx + (j - 19.5) * (2 / 39) / 4
    t = (np.arange(40) - 19.5) * (2 / 39) / 4
    yy, xx = np.meshgrid(-0.5 + t, 0.25 + t, indexing="ij")
    with torch.no_grad():
        ref = field(torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], 1)).float()).reshape(40, 40, C)
    zoomed = frames.image_frame(field, (H, W, C), 40, 40, center=(0.25, -0.5), zoom=4.0).astype(int)
    assert np.abs(zoomed - gray3(ref)).max() <= 1


def test_nerf_view_is_the_task_render(art):
    from gridfield.data.blender import load_blender
    from gridfield.tasks.nerf import render_path

    ck = art["nerf"] / "checkpoint.pt"
    scene = load_scene(ck)
    assert checkpoint_kind(ck) == "nerf"
    test = load_blender(art["scene"], "test", 1, (0.0, 0.0, 0.0))
    args = (scene.field, scene.occupancy, scene.settings, test.c2w[0], test.K)
    assert np.array_equal(frames.nerf_frame(*args, "rgb"), read_png(art["nerf"] / "test_000.png"))
    assert np.array_equal(frames.nerf_frame(*args, "depth"), read_png(art["nerf"] / "depth_000.png"))
    c2w = orbit_poses(3, scene.radius, scene.elevation)[1]
    K = Intrinsics.from_fov(20, 14, 0.7)
    ref = render_path(scene.field, scene.occupancy, scene.settings, c2w[None], K)[0]["rgb"]
    assert np.array_equal(frames.nerf_frame(scene.field, scene.occupancy, scene.settings, c2w, K), gray3(ref))
    with pytest.raises(ValueError, match="mode"):
        frames.nerf_frame(*args, "normals")


def test_sdf_mesh_and_slice_are_the_task_outputs(art):
    import trimesh

    from gridfield.report.sdf_figures import _slice_points
    from gridfield.tasks.sdf import predict

    ck = art["sdf"] / "checkpoint.pt"
    scene = load_scene(ck)
    assert checkpoint_kind(ck) == "sdf"
    v, f = frames.sdf_mesh(scene.field, 16)  # the run's --mesh-resolution: its mesh.ply, in the mesh's frame
    ply = trimesh.load(art["sdf"] / "mesh.ply", process=False)
    assert len(f) > 0 and np.array_equal(f, np.asarray(ply.faces))
    np.testing.assert_allclose(scene.normalization.from_unit(v), ply.vertices, atol=1e-5)
    vals = frames.sdf_slice(scene.field, 1, 0.2, 20)
    ref = predict(scene.field, torch.from_numpy(_slice_points(1, 0.2, 20))).reshape(20, 20).numpy()
    np.testing.assert_allclose(vals, ref, atol=1e-6)
    rgb = frames.slice_colors(np.array([[-0.2, -0.2, 0.2, 0.2]] * 2)).astype(int)
    assert rgb[0, 0, 2] > rgb[0, 0, 0] + 50 and rgb[0, 3, 0] > rgb[0, 3, 2] + 50  # blue inside, red outside
    assert (rgb[:, 2] == 0).all() and (rgb[:, 1] != 0).any()  # black where the sign changes


def test_sdf_viewer_moves_its_slice_plane(art):
    from gridfield.viewer.app import Viewer

    v = Viewer(load_scene(art["sdf"] / "checkpoint.pt"), "127.0.0.1", 0)
    try:
        assert {"mesh", "slice"} <= set(v.sdf_handles)
        np.testing.assert_allclose(v.sdf_handles["slice"].position, [0, 0, 0])
        v.controls["slice_axis"].value = "x"
        v.controls["slice_position"].value = 0.3
        np.testing.assert_allclose(v.sdf_handles["slice"].position, [0.3, 0, 0], atol=1e-6)
        rot = quat_to_matrix(v.sdf_handles["slice"].wxyz)  # the image plane's normal is the slice axis
        np.testing.assert_allclose(np.abs(rot[:, 2]), [1, 0, 0], atol=1e-9)
        v.controls["slice"].value = False
        assert not v.sdf_handles["slice"].visible
    finally:
        v.stop()


# ------------------------------------------------------------------------------------------------
# Checkpoints: kinds, training poses, old files; the command's refusals
# ------------------------------------------------------------------------------------------------
def test_nerf_checkpoint_keeps_the_training_poses_and_old_files_load(art, tmp_path):
    from gridfield.data.blender import load_blender
    from gridfield.viewer.app import Viewer

    ck = art["nerf"] / "checkpoint.pt"
    scene = load_scene(ck)
    torch.testing.assert_close(scene.train_c2w, load_blender(art["scene"], "train").c2w)
    v = Viewer(scene, "127.0.0.1", 0, resolution=64)
    try:
        assert len(v.frustums) == 4
    finally:
        v.stop()
    old = torch.load(ck, weights_only=True)
    del old["camera"]["train_c2w"]
    torch.save(old, tmp_path / "old.pt")
    assert load_scene(tmp_path / "old.pt").train_c2w is None
    old["camera"]["train_c2w"] = torch.full((4, 4, 4), float("nan"))
    torch.save(old, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="training poses"):
        load_scene(tmp_path / "bad.pt")


def test_view_refuses_bad_input_with_one_line(art, tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save({"format": "someone.else/3"}, tmp_path / "other.pt")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases = [
            ([str(tmp_path / "missing.pt")], "not found"),
            ([str(tmp_path / "junk.pt")], "cannot read checkpoint"),
            ([str(tmp_path / "other.pt")], "someone.else/3"),
            ([str(art["img"] / "checkpoint.pt"), "--port", str(busy.getsockname()[1])], "in use"),
            ([str(art["img"] / "checkpoint.pt"), "--port", "70000"], "--port"),
            ([str(art["img"] / "checkpoint.pt"), "--host", "no-such-host.invalid"], "--host"),
            ([str(art["img"] / "checkpoint.pt"), "--resolution", "4"], "--resolution"),
        ]
        for args, needle in cases:
            capsys.readouterr()
            assert main(["view", *args]) == 2, args
            err = capsys.readouterr().err.strip()
            assert err.startswith("error: ") and "\n" not in err and needle in err, (args, err)


# ------------------------------------------------------------------------------------------------
# In the browser
# ------------------------------------------------------------------------------------------------
def _fit(width: int, height: int, W0: int, H0: int) -> tuple[int, int]:
    """The image's rectangle in a ``width x height`` view at zoom 1 (as image_window documents it)."""
    if width * H0 >= height * W0:
        return height, min(width, round(height * W0 / H0))
    return min(height, round(width * H0 / W0)), width


def _expected_image_view(field, shape, width: int, height: int) -> np.ndarray:
    """The task's render of the image, letterboxed in a canvas of ``width x height`` (independent of the viewer)."""
    from gridfield.tasks.image import render_image

    h, w = _fit(width, height, shape[1], shape[0])
    out = np.empty((height, width, 3), np.uint8)
    out[:] = np.round(np.array(frames.IMAGE_BACKGROUND) * 255).astype(np.uint8)
    i0, j0 = (height - h) // 2, (width - w) // 2
    out[i0 : i0 + h, j0 : j0 + w] = gray3(render_image(field, h, w))
    return out


def _compare(canvas: np.ndarray, expected: np.ndarray, rows: int = 9, cols: int = 12) -> float:
    """Mean absolute difference (0-255) of block means of two pictures (any sizes, same aspect)."""
    return float(np.abs(block_means(canvas, rows, cols) - block_means(expected, rows, cols)).mean())


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            break
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            return proc.stdout.readline()
    err = proc.stderr.read() if proc.poll() is not None else ""
    raise AssertionError(f"gridfield view printed no address (exit {proc.poll()}): {err}")


def test_browser_shows_the_image_view_and_ctrl_c_stops_it(art):
    from gridfield.tasks.image import load_checkpoint

    driver = chrome()
    port = free_port()
    env = {**os.environ, "GRIDFIELD_FAST": "0", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gridfield.cli", "view", str(art["img"] / "checkpoint.pt"),
                             "--port", str(port), "--resolution", "320"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = _readline(proc, 120)
        url = f"http://127.0.0.1:{port}"
        assert url in line and "image checkpoint" in line, line
        driver.get(url)
        field = load_checkpoint(art["img"] / "checkpoint.pt")
        end, diff, canvas = time.monotonic() + 60, None, None
        while time.monotonic() < end:  # until the first full frame is on screen
            time.sleep(0.5)
            canvas = canvas_pixels(driver)
            if canvas is None or canvas.size == 0:
                continue
            expected = _expected_image_view(field, (32, 32, 1), canvas.shape[1], canvas.shape[0])
            diff = _compare(canvas, expected)
            if diff < 4:
                break
        assert canvas is not None and diff is not None and diff < 4, f"the canvas does not show the image (diff {diff})"
        blank = _compare(np.full_like(canvas, 255), expected)
        assert diff < 0.1 * blank and canvas.std() > 15, (diff, blank)  # not viser's blank page, not one colour
        bg = np.round(np.array(frames.IMAGE_BACKGROUND) * 255)
        h, w = _fit(canvas.shape[1], canvas.shape[0], 32, 32)
        margin = (canvas.shape[1] - w) // 2
        if margin > 8:  # the letterbox has the background colour, the picture is grey (the camera is grey)
            assert np.abs(canvas[:, : margin - 4].reshape(-1, 3).mean(0) - bg).max() < 3
        mid = canvas[:, margin + 4 : canvas.shape[1] - margin - 4].reshape(-1, 3).astype(int)
        assert np.abs(mid.mean(0) - mid.mean()).max() < 3
    finally:
        driver.quit()
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    err = proc.stderr.read().strip().splitlines()
    assert rc == 130 and err and err[-1].startswith("interrupted"), (rc, err)


def _settled(viewer, driver, timeout: float = 60.0):
    """The last full frame, once the browser has shown it: ``(camera, picture, canvas screenshot)``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = viewer.settled_frame(timeout=max(1.0, end - time.monotonic()), quiet=1.0)
        assert got is not None, "no full frame was sent to the browser"
        n = len(viewer.frame_log)
        time.sleep(0.3)  # let the browser draw it
        canvas = canvas_pixels(driver)
        if len(viewer.frame_log) == n and canvas is not None:
            return got[2], got[3], canvas
    raise AssertionError("the view never settled")


def test_browser_shows_the_nerf_view_progressively(art):
    from selenium.webdriver.common.action_chains import ActionChains

    from gridfield.tasks.nerf import render_path
    from gridfield.viewer.command import ViewConfig, start

    driver = chrome()
    viewer = start(ViewConfig(art["nerf"] / "checkpoint.pt", port=free_port(), resolution=128, device="cpu"))
    scene = viewer.scene
    try:
        assert len(viewer.frustums) == 4
        viewer.controls["training_cameras"].value = False  # compare the field's picture alone
        driver.get(viewer.url)

        def check(mode: str) -> np.ndarray:
            cam, img, canvas = _settled(viewer, driver)
            K = cam.intrinsics(128)
            assert img.shape == (K.height, K.width, 3)
            r = render_path(scene.field, scene.occupancy, scene.settings, independent_c2w(cam)[None], K)[0]
            pic = r["rgb"] if mode == "rgb" else outputs.depth_image(r["depth"], r["opacity"], scene.settings.near,
                                                                     scene.settings.far)
            expected = gray3(pic.cpu())
            assert np.array_equal(img, expected)  # the viewer sent the task's picture of that camera
            assert expected.std() > 10
            diff, blank = _compare(canvas, expected), _compare(np.full_like(canvas, 255), expected)
            # close to the task's picture, and much closer to it than viser's blank (white) page is
            assert diff < 5 and diff < 0.3 * blank, f"the canvas does not show the {mode} render " \
                f"(block difference {diff:.1f}; a blank page: {blank:.1f})"
            return canvas

        first = check("rgb")
        assert first.reshape(-1, 3).mean(0).max() < 120  # a dark scene: the black background dominates
        start_log = len(viewer.frame_log)
        canvas_el = driver.find_element("css selector", "canvas")
        chain = ActionChains(driver).move_to_element(canvas_el).click_and_hold()
        for _ in range(12):
            chain = chain.move_by_offset(12, 3).pause(0.05)
        chain.release().perform()
        moved = check("rgb")  # the camera moved: previews while dragging, then the full picture
        qualities = [q for _, q, _ in viewer.frame_log[start_log:]]
        assert PREVIEW in qualities and qualities[-1] == FULL, qualities
        assert any(size[1] == 32 for _, q, size in viewer.frame_log[start_log:] if q == PREVIEW)
        assert _compare(moved, first) > 1  # a new view
        viewer.controls["output"].value = "depth"
        check("depth")
    finally:
        driver.quit()
        viewer.stop()
