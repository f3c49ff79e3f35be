"""Blender-format loader: compositing, downscaling, intrinsics variants, and errors naming the frame."""

import json

import numpy as np
import pytest
import torch

from gridfield.data.blender import load_blender
from gridfield.errors import InputError


def _write_scene(root, frames=2, size=(6, 4), meta_extra=None, split="train"):
    import imageio.v3 as iio

    h, w = size
    (root / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    imgs, entries = [], []
    for i in range(frames):
        rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        iio.imwrite(root / split / f"r_{i}.png", rgba)
        imgs.append(rgba)
        c2w = np.eye(4)
        c2w[:3, 3] = [0, 0, 4 + i]
        entries.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
    meta = {"camera_angle_x": 0.5, "frames": entries, **(meta_extra or {})}
    (root / f"transforms_{split}.json").write_text(json.dumps(meta))
    return imgs, meta


def test_composite_on_white_and_black(tmp_path):
    imgs, _ = _write_scene(tmp_path)
    s = load_blender(tmp_path, "train")
    rgba = imgs[1].astype(np.float32) / 255
    expect = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    np.testing.assert_allclose(s.images[1].numpy(), expect, atol=1e-6)
    black = load_blender(tmp_path, "train", background=(0.0, 0.0, 0.0))
    np.testing.assert_allclose(black.images[1].numpy(), rgba[..., :3] * rgba[..., 3:], atol=1e-6)
    assert s.c2w.shape == (2, 4, 4) and s.c2w[1, 2, 3] == 5 and (s.near, s.far) == (2.0, 6.0)
    assert s.K.width == 4 and s.K.height == 6 and np.isclose(s.K.fx, 2 / np.tan(0.25))


def test_downscale_averages_blocks_and_scales_intrinsics(tmp_path):
    _write_scene(tmp_path)
    full, half = load_blender(tmp_path), load_blender(tmp_path, downscale=2)
    assert half.images.shape == (2, 3, 2, 3)
    torch.testing.assert_close(half.images[0, 1, 0], full.images[0, 2:4, 0:2].mean(dim=(0, 1)))
    assert half.K.fx == pytest.approx(full.K.fx / 2) and half.K.cx == pytest.approx(1.0)
    with pytest.raises(InputError, match="not divisible"):
        load_blender(tmp_path, downscale=4)


def test_explicit_focal_lengths(tmp_path):
    _write_scene(tmp_path, meta_extra={"fl_x": 7.0, "fl_y": 8.0, "cx": 1.5, "cy": 2.5, "w": 4, "h": 6})
    K = load_blender(tmp_path).K
    assert (K.fx, K.fy, K.cx, K.cy) == (7.0, 8.0, 1.5, 2.5)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_blender(tmp_path / "nope")
    with pytest.raises(InputError, match="transforms_test.json"):
        load_blender(tmp_path, "test")
    _, meta = _write_scene(tmp_path, frames=3)
    (tmp_path / "train" / "r_2.png").unlink()
    with pytest.raises(InputError, match=r"frame 2 \(\./train/r_2\).*not found"):
        load_blender(tmp_path)
    meta["frames"][1]["transform_matrix"] = [[1, 0], [0, 1]]
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"frame 1 .*4x4"):
        load_blender(tmp_path)
    del meta["frames"][0]["file_path"]
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="frame 0: missing 'file_path'"):
        load_blender(tmp_path)
    (tmp_path / "transforms_train.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read JSON"):
        load_blender(tmp_path)
    (tmp_path / "train" / "r_0.png").write_bytes(b"not a png")
    _write_json = {"camera_angle_x": 0.5,
                   "frames": [{"file_path": "./train/r_0", "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(_write_json))
    with pytest.raises(InputError, match=r"frame 0 \(\./train/r_0\): cannot read image"):
        load_blender(tmp_path)
