"""The reference data in ../shared/data loads through the project's own loaders (skips when absent).

Checked against facts stated in the data's README (sizes, counts, watertightness), not against the
loaders' own output.
"""

import json
import math

import pytest
import torch


def test_kodak_images_load_at_their_stated_size(shared_data):
    from gridfield.data.images import load_image

    kodak = shared_data / "kodak"
    if not kodak.is_dir():
        pytest.skip("kodak/ not present")
    files = sorted(kodak.glob("kodim*.png"))
    assert len(files) == 24
    for f in files[:3]:
        img = load_image(str(f))
        assert img.shape[2] == 3 and sorted(img.shape[:2]) == [512, 768]
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and torch.isfinite(img).all()


@pytest.mark.parametrize("name,vertices", [("bunny00.off", 37706), ("armadillo.off", 26002)])
def test_meshes_load_watertight(shared_data, name, vertices):
    from gridfield.data.meshes import load_mesh

    path = shared_data / "meshes" / name
    if not path.is_file():
        pytest.skip(f"{name} not present")
    mesh, stem = load_mesh(path)
    assert stem == path.stem and len(mesh.vertices) == vertices and mesh.is_watertight


def test_lego_transforms_and_intrinsics(shared_data):
    from gridfield.data.blender import load_blender

    root = shared_data / "lego"
    if not (root / "transforms_train.json").is_file():
        pytest.skip("lego/ not present")
    meta = json.loads((root / "transforms_train.json").read_text())
    split = load_blender(root, "train", max_frames=2)
    assert split.images.shape == (2, 400, 400, 3) and split.c2w.shape == (2, 4, 4)
    focal = 0.5 * 400 / math.tan(0.5 * meta["camera_angle_x"])
    assert split.K.fx == pytest.approx(focal) and split.K.fy == pytest.approx(focal)
    assert len(meta["frames"]) == 100
    torch.testing.assert_close(split.c2w[0], torch.tensor(meta["frames"][0]["transform_matrix"]).float())
