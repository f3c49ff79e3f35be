"""End to end: a scene made by the scene maker, trained for a fixed number of steps, reaches a stated
test PSNR; outputs, checkpoint reload and CLI errors."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from gridfield.cli import main
from gridfield.data.blender import load_blender
from gridfield.data.scene_maker import make_scene
from gridfield.tasks.nerf import NerfConfig, load_nerf, render_path, run
from gridfield.training import TrainConfig

E2E_MIN_PSNR = 25.0  # dB on the 3 test views after 300 steps (measured 27.9 dB, seed 0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("nerf")
    scene = make_scene("torus_knot", root / "scene", views=20, test_views=3, size=32)
    cfg = NerfConfig(scene=scene, model="dense", appearance="sh", resolution=32, batch_rays=1024,
                     occ_start=30, occ_every=8, occ_resolution=64, turntable_frames=2,
                     curve_views=3, curve_seconds=(1e-6,),
                     train=TrainConfig(steps=300, progress=False, seed=0, out=root / "out"))
    return scene, cfg, run(cfg)


def test_scene_maker_writes_a_loadable_scene(trained):
    scene, _, _ = trained
    tr, te = load_blender(scene, "train"), load_blender(scene, "test")
    assert tr.images.shape == (20, 32, 32, 3) and te.images.shape == (3, 32, 32, 3)
    rgba = iio.imread(scene / "train" / "r_0.png")
    assert rgba.shape == (32, 32, 4) and 0 < (rgba[..., 3] > 0).mean() < 0.9  # object and background
    assert (load_blender(scene, "val").c2w == te.c2w).all()


def test_reaches_stated_psnr_and_writes_outputs(trained):
    _, cfg, m = trained
    assert m["psnr"] >= E2E_MIN_PSNR, m["psnr"]
    assert 0.5 < m["ssim"] <= 1.0 and m["n_test_views"] == 3 and m["steps"] == 300
    saved = json.loads((cfg.train.out / "metrics.json").read_text())
    for key in ("psnr", "ssim", "train_seconds", "params", "n_test_views", "rays_per_second"):
        assert key in saved
    for name in ("test_000.png", "depth_002.png", "error_001.png", "turntable.gif", "checkpoint.pt"):
        assert (cfg.train.out / name).is_file(), name
    history = json.loads((cfg.train.out / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 100, 200, 300]
    assert history[-1]["train_psnr"] > history[1]["train_psnr"]  # the running training PSNR improves
    curve = [(h["step"], h["curve_psnr"]) for h in history if "curve_psnr" in h]
    assert [s for s, _ in curve] == [100]  # the first row past the only curve time
    assert 12.0 < curve[0][1] < m["psnr"] + 0.5  # the 3 test views, 200 steps before the final evaluation


def test_checkpoint_reload_renders_the_same_view(trained):
    scene, cfg, _ = trained
    field, occ, settings, camera = load_nerf(cfg.train.out / "checkpoint.pt")
    te = load_blender(scene, "test")
    img = render_path(field, occ, settings, te.c2w[:1], te.K)[0]["rgb"]
    saved = torch.from_numpy(iio.imread(cfg.train.out / "test_000.png").astype(np.float32) / 255)
    assert (img - saved).abs().max() <= 1.0 / 255 + 1e-4  # only PNG rounding differs
    assert camera["radius"] == pytest.approx(4.0, rel=1e-4)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["nerf", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["make-scene", str(tmp_path / "nope.obj"), "--out", str(tmp_path / "s")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["nerf", str(tmp_path), "--model", "bogus", "--steps", "1"]) == 2
