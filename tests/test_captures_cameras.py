"""Captures whose frames have cameras of their own (issue #14: per-frame intrinsics).

The independent reference is a crop: cropping a rendered view to a window at ``(ox, oy)`` moves the
principal point by ``(-ox, -oy)`` and nothing else, so the cropped frame's rays through pixel ``(c, r)``
must be the full camera's rays through ``(c + ox, r + oy)``, and its pixels the full image's. The
per-frame path of the ray sampler is checked against the single-camera path frame by frame.
"""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from gridfield.data.blender import load_blender
from gridfield.data.captures import load_scene
from gridfield.errors import InputError
from gridfield.render.rays import FrameCameras, Intrinsics, pixel_directions, rays_from_pixels
from test_captures import _frames, write_colmap, write_llff, write_transforms

CROP = 20  # of the 24-pixel views


@pytest.fixture(scope="module")
def blender(tmp_path_factory):
    from gridfield.data.scene_maker import make_scene

    root = tmp_path_factory.mktemp("cams")
    scene = make_scene("torus_knot", root / "blender", views=24, test_views=2, size=24)
    return scene, load_blender(scene, "train")


def _offsets(n):
    return [(i % 5, (3 * i) % 5) for i in range(n)]


def write_cropped(scene, out):
    """A transforms.json capture of ``CROP x CROP`` windows of the views, one principal point per frame."""
    (out / "images").mkdir(parents=True)
    K = load_blender(scene, "train").K
    frames = []
    for i, (fr, (ox, oy)) in enumerate(zip(_frames(scene), _offsets(len(_frames(scene))))):
        img = iio.imread(scene / (fr["file_path"] + ".png"))
        iio.imwrite(out / "images" / f"{i:03d}.png", img[oy:oy + CROP, ox:ox + CROP])
        frames.append({"file_path": f"images/{i:03d}.png", "transform_matrix": fr["transform_matrix"],
                       "fl_x": K.fx, "fl_y": K.fy, "cx": K.cx - ox, "cy": K.cy - oy, "w": CROP, "h": CROP})
    (out / "transforms.json").write_text(json.dumps({"frames": frames}))
    return out


def test_cropped_frames_give_the_full_cameras_rays_and_pixels(blender, tmp_path):
    scene, ref = blender
    train, test, _ = load_scene(write_cropped(scene, tmp_path / "crop"))
    order = [i for i in range(24) if i % 8]
    offsets = [_offsets(24)[i] for i in order]
    assert train.Ks is not None and len(train.Ks) == len(order)
    assert [(k.cx, k.cy) for k in train.Ks] == [(ref.K.cx - ox, ref.K.cy - oy) for ox, oy in offsets]
    assert test.Ks is not None and test.camera(1).cx == ref.K.cx - _offsets(24)[8][0]
    for j, i in enumerate(order):
        ox, oy = offsets[j]
        torch.testing.assert_close(train.images[j], ref.images[i, oy:oy + CROP, ox:ox + CROP], atol=1e-6, rtol=0)
    # every pixel of every frame in one batch, as the training sampler draws them
    n = len(order)
    frames = torch.arange(n).repeat_interleave(CROP * CROP)
    pix = torch.arange(CROP * CROP).repeat(n)
    cols, rows = pix % CROP, pix // CROP
    o, d = rays_from_pixels(train.c2w[frames], train.cameras(), cols, rows, frames=frames)
    off = torch.tensor(offsets)[frames]
    o_ref, d_ref = rays_from_pixels(train.c2w[frames], ref.K, cols + off[:, 0], rows + off[:, 1])
    torch.testing.assert_close(o, o_ref, atol=0, rtol=0)
    torch.testing.assert_close(d, d_ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="frame index"):
        rays_from_pixels(train.c2w[frames], train.cameras(), cols, rows)


def test_frame_cameras_match_each_frames_own_camera_with_distortion():
    Ks = [Intrinsics(50.0, 52.0, 20.0, 15.0, 40, 30, k1=0.08, k2=-0.02, p1=0.001, p2=-0.002),
          Intrinsics(45.0, 45.0, 21.0, 14.0, 40, 30),
          Intrinsics(55.0, 54.0, 19.5, 15.5, 40, 30, k1=-0.05, k3=0.01)]
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 3, (500,), generator=g)
    cols, rows = torch.randint(0, 40, (500,), generator=g), torch.randint(0, 30, (500,), generator=g)
    got = FrameCameras.of(Ks).directions(frames, cols, rows)
    for f, K in enumerate(Ks):
        m = frames == f
        torch.testing.assert_close(got[m], pixel_directions(K, cols[m], rows[m]), atol=1e-6, rtol=0)
    fish = Intrinsics(50.0, 50.0, 20.0, 15.0, 40, 30, k1=0.1, fisheye=True)
    with pytest.raises(ValueError, match="one lens model"):
        FrameCameras.of([Ks[0], fish])


def test_nerf_trains_with_per_frame_cameras(blender, tmp_path):
    """End to end on the cropped capture; the same run told that every frame has the first frame's camera
    (the crops' offsets ignored, as a loader with one camera per capture would) does markedly worse."""
    from gridfield.tasks.nerf import NerfConfig, run
    from gridfield.training import TrainConfig

    good = write_cropped(blender[0], tmp_path / "crop")
    bad = tmp_path / "one_camera"
    bad.mkdir()
    (bad / "images").symlink_to(good / "images")
    meta = json.loads((good / "transforms.json").read_text())
    for fr in meta["frames"]:
        fr["cx"], fr["cy"] = meta["frames"][0]["cx"], meta["frames"][0]["cy"]
    (bad / "transforms.json").write_text(json.dumps(meta))
    psnr = {}
    for name, scene in (("good", good), ("bad", bad)):
        cfg = NerfConfig(scene=scene, model="dense", appearance="sh", resolution=32, batch_rays=1024, occ_start=30,
                         occ_every=8, occ_resolution=64, turntable_frames=0, save_renders=0, aabb_scale=0.6,
                         scene_space="box", train=TrainConfig(steps=300, progress=False, out=tmp_path / name))
        psnr[name] = run(cfg)["psnr"]
    assert psnr["good"] > 17.0 and psnr["good"] > psnr["bad"] + 3.0, psnr  # measured 18.8 and 11.8 dB


def test_llff_rows_keep_their_own_focal_length(blender, tmp_path):
    out = write_llff(blender[0], tmp_path / "llff")
    arr = np.load(out / "poses_bounds.npy")
    arr[1::2, 14] *= 1.25  # (h, w, f) is the fifth column of each 3x5 matrix: f of every odd row
    np.save(out / "poses_bounds.npy", arr)
    train, test, _ = load_scene(out)
    f0 = blender[1].K.fx
    rows = [i for i in range(24) if i % 8]
    assert [k.fx for k in train.Ks] == pytest.approx([f0 * (1.25 if i % 2 else 1.0) for i in rows])
    assert test.Ks is None  # frames 0, 8, 16: all even, one camera


def test_colmap_model_with_two_cameras(blender, tmp_path):
    pytest.importorskip("pycolmap")
    K = blender[1].K
    out = write_colmap(blender[0], tmp_path / "cm")
    cams = out / "sparse" / "0" / "cameras.txt"
    cams.write_text(cams.read_text() + f"2 SIMPLE_RADIAL {K.width} {K.height} {K.fx * 0.9} {K.cx} {K.cy} 0.03\n")
    images = out / "sparse" / "0" / "images.txt"
    lines = images.read_text().splitlines()
    for j, line in enumerate(lines):  # v003.png, v006.png, ... (image ids reversed) on camera 2
        parts = line.split()
        if len(parts) == 10 and int(parts[9][1:4]) % 3 == 0:
            parts[8] = "2"
            lines[j] = " ".join(parts)
    images.write_text("\n".join(lines) + "\n")
    train, _, _ = load_scene(out, format="colmap")
    order = [i for i in range(24) if i % 8]
    assert [k.k1 for k in train.Ks] == [0.03 if i % 3 == 0 else 0.0 for i in order]
    assert [k.fx for k in train.Ks] == pytest.approx([K.fx * (0.9 if i % 3 == 0 else 1.0) for i in order])


def test_frames_of_different_sizes_or_lenses_are_refused(blender, tmp_path):
    scene = blender[0]
    out = write_transforms(scene, tmp_path / "sizes")
    meta = json.loads((out / "transforms.json").read_text())
    iio.imwrite(out / "images" / "005.png", np.zeros((20, 24, 3), np.uint8))
    meta["frames"][5]["h"] = 20
    (out / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"frame 5 \(images/005.png\): its image is 24x20, the first frame's 24x24"):
        load_scene(out)
    out = write_transforms(scene, tmp_path / "lenses")
    meta = json.loads((out / "transforms.json").read_text())
    meta["frames"][3] |= {"camera_model": "OPENCV_FISHEYE", "k1": 0.01}
    (out / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="some cameras are fisheye and some are not"):
        load_scene(out)
