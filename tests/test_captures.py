"""Real-capture formats: a synthetic scene written as Instant-NGP transforms.json, LLFF and COLMAP text
models (by this test, from the formats' documentation), read back by the loaders: poses and rays
round-trip, the split rule, missing images, lens distortion against pycolmap, and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from gridfield.data.blender import load_blender
from gridfield.data.captures import detect_format, load_scene, normalize_poses
from gridfield.errors import InputError
from gridfield.render.distortion import distort, undistort
from gridfield.render.rays import Intrinsics, camera_rays, rays_from_pixels

N_VIEWS = 24


@pytest.fixture(scope="module")
def blender(tmp_path_factory):
    from gridfield.data.scene_maker import make_scene

    root = tmp_path_factory.mktemp("cap")
    scene = make_scene("torus_knot", root / "blender", views=N_VIEWS, test_views=2, size=24)
    return scene, load_blender(scene, "train")


def _frames(scene):
    return json.loads((scene / "transforms_train.json").read_text())["frames"]


def write_transforms(scene, out, drop=(), **camera):
    out.mkdir()
    (out / "images").mkdir()
    frames = []
    for i, fr in enumerate(_frames(scene)):
        name = f"images/{i:03d}.png"
        if i not in drop:
            shutil.copy(scene / (fr["file_path"] + ".png"), out / name)
        frames.append({"file_path": name, "transform_matrix": fr["transform_matrix"]})
    K = load_blender(scene, "train").K
    meta = {"fl_x": K.fx, "fl_y": K.fy, "cx": K.cx, "cy": K.cy, "w": K.width, "h": K.height, "aabb_scale": 4,
            **camera, "frames": frames}
    (out / "transforms.json").write_text(json.dumps(meta))
    return out


def write_llff(scene, out):
    out.mkdir()
    (out / "images").mkdir()
    tr = load_blender(scene, "train")
    rows = []
    for i, fr in enumerate(_frames(scene)):
        shutil.copy(scene / (fr["file_path"] + ".png"), out / "images" / f"img_{i:03d}.png")
        c2w = np.asarray(fr["transform_matrix"])
        # LLFF columns: down, right, back, translation, (h, w, f)
        m = np.stack([-c2w[:3, 1], c2w[:3, 0], c2w[:3, 2], c2w[:3, 3],
                      [tr.K.height, tr.K.width, tr.K.fx]], 1)
        rows.append(np.concatenate([m.reshape(-1), [2.0, 6.0]]))
    np.save(out / "poses_bounds.npy", np.stack(rows))
    return out


def write_colmap(scene, out, model="PINHOLE", params=None):
    (out / "sparse" / "0").mkdir(parents=True)
    (out / "images").mkdir()
    K = load_blender(scene, "train").K
    params = params or [K.fx, K.fy, K.cx, K.cy]
    (out / "sparse" / "0" / "cameras.txt").write_text(
        f"# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n1 {model} {K.width} {K.height} {' '.join(map(str, params))}\n")
    lines = ["# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME"]
    for i, fr in enumerate(_frames(scene)):
        shutil.copy(scene / (fr["file_path"] + ".png"), out / "images" / f"v{i:03d}.png")
        c2w = np.asarray(fr["transform_matrix"]) @ np.diag([1.0, -1, -1, 1])  # OpenGL -> OpenCV axes
        w2c = np.linalg.inv(c2w)
        x, y, z, w = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        t = w2c[:3, 3]
        lines += [f"{N_VIEWS - i} {w} {x} {y} {z} {t[0]} {t[1]} {t[2]} 1 v{i:03d}.png", ""]  # ids reversed
    (out / "sparse" / "0" / "images.txt").write_text("\n".join(lines) + "\n")
    (out / "sparse" / "0" / "points3D.txt").write_text("")
    return out


def _restore(split, info):
    """The loaded poses mapped back to the file's frame (the similarity ``world_from_scene``)."""
    T = torch.tensor(info.world_from_scene, dtype=torch.float64)
    s = float(T[:3, 0].norm())
    c2w = split.c2w.double()
    out = c2w.clone()
    out[:, :3, :3] = T[:3, :3] @ c2w[:, :3, :3] / s
    out[:, :3, 3] = c2w[:, :3, 3] @ T[:3, :3].T + T[:3, 3]
    return out


def _check_roundtrip(blender, fmt_dir, fmt):
    _, ref = blender
    assert detect_format(fmt_dir) == fmt
    train, test, info = load_scene(fmt_dir)
    assert info.format == fmt
    assert test.images.shape[0] == 3 and train.images.shape[0] == N_VIEWS - 3  # frames 0, 8, 16 held out
    order = [i for i in range(N_VIEWS) if i % 8]
    torch.testing.assert_close(_restore(train, info).float(), ref.c2w[order], atol=1e-5, rtol=0)
    torch.testing.assert_close(train.images, ref.images[order], atol=1e-6, rtol=0)
    assert (train.K.fx, train.K.cx, train.K.width) == pytest.approx((ref.K.fx, ref.K.cx, ref.K.width))
    # the cameras now fill the cube [-1, 1]^3, centred, the mean up along +Z
    pos = torch.cat([train.c2w, test.c2w])[:, :3, 3]
    assert float(pos.abs().max()) == pytest.approx(1.0, abs=1e-5)
    assert float(pos.mean(0).norm()) < 1e-5
    up = torch.cat([train.c2w, test.c2w])[:, :3, 1].mean(0)
    torch.testing.assert_close(up / up.norm(), torch.tensor([0.0, 0.0, 1.0]), atol=1e-5, rtol=0)
    return train, test, info


def test_transforms_json_roundtrip_and_missing_frames(blender, tmp_path, capsys):
    scene, _ = blender
    _check_roundtrip(blender, write_transforms(scene, tmp_path / "ngp"), "transforms")
    out = write_transforms(scene, tmp_path / "gaps", drop=(3, 5, 7, 9))
    train, test, info = load_scene(out)
    assert info.skipped == ["images/003.png", "images/005.png", "images/007.png", "images/009.png"]
    assert "4 of 24 frames have no image" in capsys.readouterr().out
    assert train.images.shape[0] + test.images.shape[0] == N_VIEWS - 4
    with pytest.raises(InputError, match=r"frame 3 \(images/003.png\): image .* not found"):
        load_scene(out, missing="error")


def test_llff_roundtrip(blender, tmp_path):
    train, _, info = _check_roundtrip(blender, write_llff(blender[0], tmp_path / "llff"), "llff")
    assert info.extra["near_bound"] == 2.0 and info.extra["far_bound"] == 6.0
    assert info.extra["scene_radius"] == pytest.approx(1 + 6.0 / 4.0, rel=0.05)  # cameras at distance ~4


def test_colmap_text_model_roundtrip(blender, tmp_path):
    pytest.importorskip("pycolmap")
    _check_roundtrip(blender, write_colmap(blender[0], tmp_path / "colmap"), "colmap")


def test_colmap_cameras_with_distortion(blender, tmp_path):
    pytest.importorskip("pycolmap")
    K = blender[1].K
    out = write_colmap(blender[0], tmp_path / "cm", "OPENCV", [K.fx, K.fy, K.cx, K.cy, 0.05, -0.02, 0.001, -0.002])
    train, _, _ = load_scene(out, format="colmap")
    assert (train.K.k1, train.K.k2, train.K.p1, train.K.p2) == (0.05, -0.02, 0.001, -0.002) and train.K.distorted


@pytest.mark.parametrize("model,params,kw", [
    ("OPENCV", [500, 510, 320, 240, 0.05, -0.08, -0.001, 0.0015], dict(k1=0.05, k2=-0.08, p1=-0.001, p2=0.0015)),
    ("OPENCV_FISHEYE", [300, 300, 320, 240, 0.1, -0.02, 0.005, -0.001],
     dict(k1=0.1, k2=-0.02, k3=0.005, k4=-0.001, fisheye=True)),
])
def test_undistortion_matches_pycolmap(model, params, kw):
    pycolmap = pytest.importorskip("pycolmap")
    cam = pycolmap.Camera.create_from_model_name(1, model, 1.0, 640, 480)
    cam.params = params
    uv = np.random.default_rng(0).random((400, 2)) * [640, 480]
    ref = np.asarray(cam.cam_from_img(uv))[:, :2]
    x = (torch.tensor(uv[:, 0]) - params[2]) / params[0]
    y = (torch.tensor(uv[:, 1]) - params[3]) / params[1]
    xu, yu = undistort(x, y, **kw)
    np.testing.assert_allclose(np.stack([xu.numpy(), yu.numpy()], 1), ref, atol=1e-9)
    xd, yd = distort(xu, yu, **kw)  # and distort inverts it
    torch.testing.assert_close(torch.stack([xd, yd]), torch.stack([x, y]), atol=1e-9, rtol=0)


def test_distorted_rays_reproject_to_their_pixels():
    K = Intrinsics(300.0, 310.0, 100.0, 80.0, 200, 160, k1=0.08, k2=-0.03, p1=0.002, p2=-0.001)
    c2w = torch.eye(4)
    o, d = camera_rays(c2w, K)
    x, y = d[:, 0] / -d[:, 2], -d[:, 1] / -d[:, 2]  # back to OpenCV normalised coordinates
    xd, yd = distort(x.double(), y.double(), **K.distortion())
    u, v = xd * K.fx + K.cx, yd * K.fy + K.cy
    cols, rows = torch.meshgrid(torch.arange(200), torch.arange(160), indexing="xy")
    torch.testing.assert_close(u.float(), cols.reshape(-1).float() + 0.5, atol=2e-3, rtol=0)
    torch.testing.assert_close(v.float(), rows.reshape(-1).float() + 0.5, atol=2e-3, rtol=0)
    pinhole = Intrinsics(300.0, 310.0, 100.0, 80.0, 200, 160)
    plain = rays_from_pixels(c2w, pinhole, cols.reshape(-1), rows.reshape(-1))[1]
    assert (plain - d).abs().max() > 1e-3  # the distortion matters


def test_normalize_poses_is_a_similarity():
    rng = np.random.default_rng(1)
    c2w = np.tile(np.eye(4), (5, 1, 1))
    c2w[:, :3, :3] = Rotation.random(5, random_state=1).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(5, 3)) * 7 + 3
    new, T = normalize_poses(c2w)
    back = np.einsum("ij,njk->nik", T, new)
    back[:, :3, :3] /= np.linalg.norm(T[:3, 0])
    np.testing.assert_allclose(back, c2w, atol=1e-9)


def test_bad_captures(blender, tmp_path):
    scene, ref = blender
    with pytest.raises(InputError, match="no scene found"):
        load_scene(tmp_path)
    out = write_transforms(scene, tmp_path / "nanpose")
    meta = json.loads((out / "transforms.json").read_text())
    meta["frames"][2]["transform_matrix"][0][3] = float("nan")
    (out / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"frame 2 \(images/002.png\).*NaN"):
        load_scene(out)
    out = write_transforms(scene, tmp_path / "zerof", fl_x=0.0)
    with pytest.raises(InputError, match="'fl_x' must be a positive focal length"):
        load_scene(out)
    out = write_transforms(scene, tmp_path / "nofocal")
    meta = json.loads((out / "transforms.json").read_text())
    del meta["fl_x"], meta["fl_y"]
    (out / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="needs a focal length"):
        load_scene(out)
    out = write_transforms(scene, tmp_path / "unreadable")
    (out / "images" / "004.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"frame 4 \(images/004.png\).*cannot read"):
        load_scene(out)
    out = write_llff(scene, tmp_path / "mixed")
    import imageio.v3 as iio

    iio.imwrite(out / "images" / "img_005.png", np.zeros((20, 24, 3), np.uint8))
    with pytest.raises(InputError, match="img_005.png is 24x20, the first one 24x24"):
        load_scene(out)
    out = write_llff(scene, tmp_path / "singular")
    arr = np.load(out / "poses_bounds.npy")
    arr[3, :15] = 0.0
    arr[3, 4::5] = [24, 24, ref.K.fx]
    np.save(out / "poses_bounds.npy", arr)
    with pytest.raises(InputError, match="row 3 .*not a rigid|row 3 .*not orthonormal|row 3"):
        load_scene(out)
    with pytest.raises(InputError, match="unknown scene format"):
        load_scene(scene, format="nerfstudio")


def test_nerf_trains_on_a_transforms_capture(blender, tmp_path):
    """``gridfield nerf`` detects the format, holds out every 8th frame and trains in the re-oriented
    frame (an object capture: the box inside the cameras' cube); the checkpoint keeps the way back to
    the file's frame."""
    from gridfield.tasks.nerf import NerfConfig, load_nerf, run
    from gridfield.training import TrainConfig

    scene = write_transforms(blender[0], tmp_path / "ngp")
    cfg = NerfConfig(scene=scene, model="dense", appearance="sh", resolution=32, batch_rays=1024, occ_start=30,
                     occ_every=8, occ_resolution=64, turntable_frames=0, aabb_scale=0.6, scene_space="box",
                     train=TrainConfig(steps=300, progress=False, out=tmp_path / "out"))
    m = run(cfg)
    assert m["n_test_views"] == 3 and m["psnr"] > 20.0, m["psnr"]  # measured 22.5 dB
    _, _, _, camera = load_nerf(tmp_path / "out" / "checkpoint.pt")
    assert camera["format"] == "transforms" and np.asarray(camera["world_from_scene"]).shape == (4, 4)


@pytest.fixture(scope="module")
def capture64(tmp_path_factory):
    """A 64-view, 32-pixel object capture as transforms.json (24 views are too few for unbounded space)."""
    from gridfield.data.scene_maker import make_scene

    root = tmp_path_factory.mktemp("cap64")
    return write_transforms(make_scene("torus_knot", root / "blender", views=64, test_views=2, size=32), root / "ngp")


@pytest.mark.parametrize("model,floor", [("dense", 16.0), ("hash-small", 21.0)])
def test_nerf_trains_in_contracted_space(capture64, tmp_path, model, floor):
    """The default for a transforms.json capture: Mip-NeRF 360's contraction, marching and occupancy in
    contracted space and a learned background; the checkpoint reloads into the same renders."""
    from gridfield.metrics import psnr_from_mse
    from gridfield.render.pipeline import render_camera
    from gridfield.tasks.nerf import NerfConfig, load_nerf, run
    from gridfield.training import TrainConfig

    cfg = NerfConfig(scene=capture64, model=model, resolution=48, batch_rays=1024, occ_start=30, occ_every=8,
                     occ_resolution=32, turntable_frames=0, save_renders=0,
                     train=TrainConfig(steps=400, progress=False, out=tmp_path / "out"))
    m = run(cfg)
    assert m["scene_space"] == "contract" and m["spec"]["field"]["background"] == "sh"
    assert m["spec"]["aabb"] == [-2.0, -2.0, -2.0, 2.0, 2.0, 2.0]
    assert m["psnr"] > floor, m["psnr"]  # measured 2026-12-02: dense 18.1, hash-small 23.5 dB (box: 20.8, 25.2)
    field, occ, settings, _ = load_nerf(tmp_path / "out" / "checkpoint.pt")
    assert settings.contraction == "l2" and settings.far == 1000.0
    assert float(field.background_color(torch.tensor([[0.0, 0.0, 1.0]])).min()) > 0.9  # the white backdrop
    _, test, _ = load_scene(capture64)
    rgb = render_camera(field, test.c2w[0], test.K, occ, field.aabb, settings)["rgb"]
    assert psnr_from_mse(float((rgb - test.images[0]).square().mean())) == pytest.approx(m["psnr_per_view"][0],
                                                                                          abs=1e-3)


def test_nerf_trains_a_forward_facing_llff_scene_in_ndc(tmp_path):
    """LLFF defaults to NDC: LLFF's re-centring, NDC rays in the box [-1.5, 1.5]^2 x [-1, 1], a learned
    background, and the every-8th hold-out; the checkpoint keeps the NDC set-up."""
    from gridfield.data.scene_maker import make_scene
    from gridfield.tasks.nerf import NerfConfig, load_nerf, run
    from gridfield.training import TrainConfig

    scene = make_scene("torus_knot", tmp_path / "llff", views=24, size=40, height=30, layout="llff")
    cfg = NerfConfig(scene=scene, model="dense", resolution=48, batch_rays=1024, occ_start=30, occ_every=8,
                     downscale=8, occ_resolution=32, turntable_frames=2,
                     train=TrainConfig(steps=300, progress=False, out=tmp_path / "out"))
    m = run(cfg)
    assert m["scene_space"] == "ndc" and m["n_test_views"] == 3
    assert m["psnr"] > 22.0, m["psnr"]  # measured 2026-12-02: 26.85 dB (hash-small 28.2)
    _, _, settings, _ = load_nerf(tmp_path / "out" / "checkpoint.pt")
    assert settings.ndc is not None and settings.ndc[4] == 1.0 and settings.near == 0.0
    assert (tmp_path / "out" / "turntable.gif").exists()
    with pytest.raises(InputError, match="looks away"):  # cameras all round an object are not forward-facing
        load_scene(write_llff(make_scene("torus_knot", tmp_path / "b", views=8, test_views=1, size=16),
                              tmp_path / "ring"), ndc=True)
