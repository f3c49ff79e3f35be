"""``make_scene(layout="llff")``: a forward-facing synthetic capture in LLFF's own format, read back by the
LLFF loader. The loaded cameras are compared with the generator's through what the loader's re-centring,
re-orientation and scaling leave unchanged (relative poses up to scale, the pixels 3D points project to,
re-renders of the scene from the loaded cameras); the depth bounds against the wall and floor planes
computed here analytically. Corrupted axis conventions must fail the same comparisons."""

import math
import shutil

import numpy as np
import pytest
import torch

from gridfield.cli import main
from gridfield.data.captures import detect_format, load_scene
from gridfield.data.meshes import load_mesh, normalize
from gridfield.data.scene_maker import (
    LLFF_CAMERA_ANGLE_X,
    LLFF_FACTOR,
    WALL,
    _intersector,
    llff_cameras,
    llff_floor_z,
    llff_world,
    make_scene,
    render_view,
)
from gridfield.errors import InputError
from gridfield.render.rays import Intrinsics, camera_rays

pytest.importorskip("trimesh")

VIEWS, W, H, DIST = 12, 32, 24, 4.0


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = make_scene("torus_knot", tmp_path_factory.mktemp("llff") / "scene", views=VIEWS, size=W, height=H,
                      distance=DIST, supersample=1, layout="llff")
    return root, llff_cameras(VIEWS, DIST).double()


def _file_order(root):
    """The loaded poses ``[N, 4, 4]`` (float64) and images in the file's order, and the scene info."""
    train, test, info = load_scene(root, downscale=LLFF_FACTOR)
    names = train.names + test.names
    order = [names.index(f"image{i:03d}.png") for i in range(len(names))]
    c2w = torch.cat([train.c2w, test.c2w]).double()[order]
    return c2w, torch.cat([train.images, test.images])[order], train.K, info


def _project(c2w, K, p):
    """Pixel coordinates ``[N, 2]`` (column, row; continuous) of the world point ``p [3]`` in cameras ``c2w``."""
    q = (p - c2w[:, :3, 3]).unsqueeze(1) @ c2w[:, :3, :3]  # camera frame (OpenGL: looks down -Z, +Y up)
    q = q[:, 0]
    uv = torch.stack([K.fx * q[:, 0] / -q[:, 2] + K.cx, -K.fy * q[:, 1] / -q[:, 2] + K.cy], -1)
    return torch.where((q[:, 2] < 0)[:, None], uv, math.inf)  # behind the camera: seen nowhere


def _projection_error(root, gen) -> float:
    """Largest pixel distance between where the generator's and the loaded cameras see a few world points."""
    c2w, _, K, info = _file_order(root)
    scene_from_world = torch.from_numpy(np.linalg.inv(info.world_from_scene))
    Kgen = Intrinsics.from_fov(W, H, LLFF_CAMERA_ANGLE_X)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.4, -0.3, 0.2], [-1.0, WALL, 0.8], [0.5, 0.0, -1.0]], dtype=torch.float64)
    err = 0.0
    for p in pts:
        ps = scene_from_world[:3, :3] @ p + scene_from_world[:3, 3]
        err = max(err, float((_project(c2w, K, ps) - _project(gen, Kgen, p)).norm(dim=-1).max()))
    return err


def test_detected_loaded_and_split(scene):
    root, _ = scene
    assert detect_format(root) == "llff"
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["images_8", "poses_bounds.npy"]
    train, test, info = load_scene(root, downscale=LLFF_FACTOR)
    assert info.format == "llff"
    assert test.names == ["image000.png", "image008.png"]  # every 8th image, LLFF's llffhold
    assert train.names == [f"image{i:03d}.png" for i in range(VIEWS) if i % 8]
    assert train.images.shape == (VIEWS - 2, H, W, 3) and test.images.shape == (2, H, W, 3)
    arr = np.load(root / "poses_bounds.npy")
    assert arr.shape == (VIEWS, 17)
    hwf = arr[:, :15].reshape(-1, 3, 5)[:, :, 4]
    f = 0.5 * W / math.tan(0.5 * LLFF_CAMERA_ANGLE_X)
    np.testing.assert_allclose(hwf, np.tile([H * 8, W * 8, f * 8], (VIEWS, 1)))  # the full-size images, 8x
    assert (train.K.fx, train.K.cx, train.K.cy, train.K.width, train.K.height) == pytest.approx((f, W / 2, H / 2, W, H))
    # every ray hits the wall, the floor or the object: no background colour anywhere (the image is RGB)
    assert float(train.images.min()) > 0.02
    with pytest.raises(InputError, match="images_1"):  # only LLFF's 1/8 folder exists
        load_scene(root)


def test_relative_poses_match_the_generator(scene):
    root, gen = scene
    c2w, _, _, _ = _file_order(root)
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    Rg, tg = gen[:, :3, :3], gen[:, :3, 3]
    # camera j in camera i's frame: rotation exactly, translation up to the loader's global scale
    rel_r = R[:, None].transpose(-1, -2) @ R[None]
    rel_rg = Rg[:, None].transpose(-1, -2) @ Rg[None]
    torch.testing.assert_close(rel_r, rel_rg, atol=1e-5, rtol=0)
    rel_t = (R.transpose(-1, -2)[:, None] @ (t[None] - t[:, None]).unsqueeze(-1))[..., 0]
    rel_tg = (Rg.transpose(-1, -2)[:, None] @ (tg[None] - tg[:, None]).unsqueeze(-1))[..., 0]
    scale = float(rel_t.norm() / rel_tg.norm())
    torch.testing.assert_close(rel_t, scale * rel_tg, atol=1e-5, rtol=0)
    # the rig is what was asked for: cameras spread over a quarter of the distance, all looking along +Y
    assert float(tg[:, 0].max() - tg[:, 0].min()) == pytest.approx(0.25 * DIST, rel=0.3)
    assert float(tg[:, 1].mean()) == pytest.approx(-DIST, abs=0.05)
    assert float((-Rg[:, 1, 2]).min()) > math.cos(math.radians(10))  # they converge on the object a little


def test_points_project_to_the_same_pixels(scene):
    root, gen = scene
    assert _projection_error(root, gen) < 1e-3


# other column orders a writer could get wrong, from LLFF's (down, right, back); all rotations (det +1)
CORRUPT = {"OpenGL columns (right, up, back) as they are": lambda d, r, b: (r, -d, b),
           "OpenCV columns (right, down, forward)": lambda d, r, b: (r, d, -b),
           "up and left instead of down and right": lambda d, r, b: (-d, -r, b),
           "forward instead of back": lambda d, r, b: (d, -r, -b)}


@pytest.mark.parametrize("corrupt", list(CORRUPT))
def test_a_wrong_axis_convention_is_caught(scene, tmp_path, corrupt):
    root, gen = scene
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    arr = np.load(bad / "poses_bounds.npy")
    m = arr[:, :15].reshape(-1, 3, 5).copy()
    cols = [c.copy() for c in CORRUPT[corrupt](m[:, :, 0], m[:, :, 1], m[:, :, 2])]
    for k in range(3):
        m[:, :, k] = cols[k]
    arr[:, :15] = m.reshape(-1, 15)
    np.save(bad / "poses_bounds.npy", arr)
    assert _projection_error(bad, gen) > 1.0
    m[:, :, [0, 1]] = m[:, :, [1, 0]]  # a swap of two columns is a reflection, which the loader refuses
    arr[:, :15] = m.reshape(-1, 15)
    np.save(bad / "poses_bounds.npy", arr)
    with pytest.raises(InputError, match="reflection"):
        load_scene(bad, downscale=LLFF_FACTOR)


def test_renders_from_the_loaded_cameras_reproduce_the_images(scene):
    root, gen = scene
    c2w, images, K, info = _file_order(root)
    T = torch.from_numpy(info.world_from_scene)
    s = float(T[:3, 0].norm())
    world = c2w.clone()
    world[:, :3, :3] = T[:3, :3] @ c2w[:, :3, :3] / s
    world[:, :3, 3] = c2w[:, :3, 3] @ T[:3, :3].T + T[:3, 3]
    mesh, _ = normalize(load_mesh("torus_knot")[0], radius=1.0)
    world_mesh, colour = llff_world(mesh, 1.0, llff_floor_z(gen), 50.0)
    isect = _intersector(world_mesh)
    for i in (0, 5, VIEWS - 1):
        rgba = render_view(world_mesh, isect, world[i], K, supersample=1, colour=colour)
        assert rgba[..., 3].min() == 1.0
        err = np.abs(rgba[..., :3] - images[i].numpy())
        assert err.mean() < 1.5 / 255 and np.quantile(err, 0.99) < 4 / 255, (i, err.mean())
        flipped = np.abs(rgba[::-1, :, :3] - images[i].numpy()).mean()  # an upside-down camera would match this
        assert flipped > 10 * err.mean() + 0.02


def test_bounds_bracket_the_analytic_depths(scene):
    root, gen = scene
    arr = np.load(root / "poses_bounds.npy")
    near, far = arr[:, 15], arr[:, 16]
    assert (near > 0).all() and (near < far).all()
    K = Intrinsics.from_fov(W, H, LLFF_CAMERA_ANGLE_X)
    floor = llff_floor_z(gen)
    for i in range(VIEWS):
        o, d = camera_rays(gen[i], K)
        o, d = o.double(), d.double()
        fwd = -gen[i, :3, 2]
        z = d @ fwd  # depth along the optical axis per unit of ray length
        wall = (WALL - o[:, 1]) / d[:, 1] * z  # every ray goes towards +Y and meets the wall's plane
        down = d[:, 2] < 0
        floor_depth = (floor - o[down, 2]) / d[down, 2] * z[down]
        # far: the deepest visible points are on the wall; nothing visible lies beyond the wall's plane
        assert float(wall.min()) - 1e-6 <= far[i] <= float(wall.max()) + 1e-6
        # near: nothing is nearer than the floor's plane or the object's bounding sphere; the bottom row sees
        # the floor (or something nearer)
        centre = float(-gen[i, :3, 3] @ fwd)
        assert near[i] >= min(float(floor_depth.min()), centre - 1.0) - 1e-6
        bottom = (floor - o[-W:, 2]) / d[-W:, 2] * z[-W:]
        assert near[i] <= float(bottom.max()) + 1e-6


def test_cli_and_bad_input(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["make-scene", "--layout", "llff", "--views", "3", "--size", "16", "--supersample", "1",
                 "--out", str(out)]) == 0
    train, test, _ = load_scene(out, downscale=8)
    assert train.images.shape == (2, 12, 16, 3) and test.names == ["image000.png"]  # height: 3/4 of --size
    capsys.readouterr()
    assert main(["make-scene", "--layout", "llff", "--views", "1", "--size", "16", "--out", str(tmp_path / "x")]) == 2
    assert "--views" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    for kw, word in (({"layout": "ngp"}, "layout"), ({"spread": math.nan}, "spread"), ({"height": 2}, "height"),
                     ({"layout": "llff", "views": 1}, "views")):
        with pytest.raises(InputError, match=word):
            make_scene("torus_knot", tmp_path / "y", **({"views": 3, "size": 8} | kw))
    assert not (tmp_path / "y").exists()
