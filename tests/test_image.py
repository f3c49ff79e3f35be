"""Image data, pixel convention, the fitting loop, hold-out and checkpoints (independent checks)."""

import socket
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gridfield.data.images import BUILTIN_IMAGES, builtin_path, load_image, pixel_coords
from gridfield.errors import InputError
from gridfield.fields import Field, IdentityDecoder
from gridfield.grids.dense import DenseGrid
from gridfield.metrics import psnr
from gridfield.models import grid_classes
from gridfield.presets import image_field, image_field_spec
from gridfield.tasks.image import fit_image, holdout_mask, load_checkpoint, render_image, save_checkpoint
from gridfield.training import cosine

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def crop() -> torch.Tensor:
    """64x64 RGB crop of the astronaut's face region (full resolution, no resampling)."""
    return load_image("astronaut")[60:124, 200:264].contiguous()


# ---------------------------------------------------------------- data


def test_every_builtin_loads_offline(monkeypatch):
    import skimage

    def no_network(*a, **k):
        raise AssertionError("network access while loading a built-in image")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    pkg = Path(skimage.__file__).parent
    for name in BUILTIN_IMAGES:
        assert pkg in builtin_path(name).parents  # shipped inside the wheel, not in a download cache
        img = load_image(name)
        assert img.dtype == torch.float32 and img.ndim == 3 and img.shape[-1] in (1, 3, 4), name
        assert min(img.shape[:2]) >= 100 and 0 <= float(img.min()) and float(img.max()) <= 1, name


def test_max_size_downscales_with_antialiasing():
    full = load_image("coffee")  # 400 x 600
    small = load_image("coffee", max_size=150)
    assert small.shape == (100, 150, 3)
    box = F.avg_pool2d(full.permute(2, 0, 1)[None], 4)[0].permute(1, 2, 0)  # independent 4x4 box filter
    assert (small - box).abs().mean() < 0.02


def test_load_matches_file_and_scales_integer_types(tmp_path):
    ref = iio.imread(builtin_path("astronaut"))
    assert torch.equal(load_image("astronaut"), torch.from_numpy(ref.astype(np.float32) / 255))
    a16 = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 97)
    iio.imwrite(tmp_path / "g16.png", a16)
    img = load_image(str(tmp_path / "g16.png"))
    assert img.shape == (20, 30, 1)
    assert torch.allclose(img[..., 0], torch.from_numpy(a16 / 65535.0).float())
    la = np.random.default_rng(0).integers(0, 256, (16, 12, 2), dtype=np.uint8)
    iio.imwrite(tmp_path / "la.png", la)
    rgba = load_image(str(tmp_path / "la.png"))
    assert rgba.shape == (16, 12, 4)  # gray + alpha -> RGBA, alpha kept
    assert torch.equal(rgba[..., 3], torch.from_numpy(la[..., 1] / 255).float())
    assert torch.equal(rgba[..., 0], rgba[..., 2])


def test_load_errors(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    iio.imwrite(tmp_path / "tiny.png", np.zeros((5, 40), np.uint8))
    nan = np.full((16, 16), 0.5, np.float32)
    nan[3, 4] = np.nan
    iio.imwrite(tmp_path / "nan.tif", nan)
    cases = {str(tmp_path / "missing.png"): "not found", str(tmp_path): "directory",
             str(tmp_path / "junk.png"): "cannot read", str(tmp_path / "tiny.png"): "too small",
             str(tmp_path / "nan.tif"): "NaN", "astronot": "not found"}
    for path, msg in cases.items():
        with pytest.raises(InputError, match=msg):
            load_image(path)


def test_exr_without_opencv_names_what_to_install(tmp_path):
    try:
        import cv2  # noqa: F401
    except ImportError:
        (tmp_path / "x.exr").write_bytes(b"v/1\x01")
        with pytest.raises(InputError, match="opencv-python-headless"):
            load_image(str(tmp_path / "x.exr"))
    else:
        pytest.skip("OpenCV is installed: EXR files are read through it")


def test_pixel_coords_convention_matches_grid_sample(crop):
    H, W = 12, 17
    x = pixel_coords(H, W)
    assert x.shape == (H * W, 2)
    assert torch.allclose(x[:W, 0], torch.linspace(-1, 1, W)) and torch.all(x[:W, 1] == -1)  # first row
    assert torch.allclose(x[::W, 1], torch.linspace(-1, 1, H)) and torch.all(x[::W, 0] == -1)  # first column
    img = torch.rand(H, W, 3)
    sampled = F.grid_sample(img.permute(2, 0, 1)[None], x.view(1, H, W, 2), align_corners=True)
    assert torch.allclose(sampled[0].permute(1, 2, 0), img, atol=1e-6)  # grid_sample: x = width axis


def test_dense_grid_with_image_as_nodes_reproduces_it(crop):
    H, W, C = crop.shape
    grid = DenseGrid(2, resolutions=W, features_per_level=C)
    with torch.no_grad():
        grid.features.copy_(crop.reshape(-1, C))  # node (i0 = column, i1 = row) is row i0 + i1 * R
    field = Field(grid, IdentityDecoder(C, C))
    assert torch.allclose(render_image(field, H, W, clamp=False), crop, atol=1e-5)  # float32 rounding


# ---------------------------------------------------------------- loop pieces


def test_holdout_masks():
    g = torch.Generator().manual_seed(0)
    m = holdout_mask(40, 50, 0.3, "random", g)
    assert m.dtype == torch.bool and int(m.sum()) == 600
    reg = holdout_mask(40, 50, 0.75, "regular").view(40, 50)
    assert not reg[::2, ::2].any() and reg.sum() == 40 * 50 - 20 * 25  # train on every other pixel
    reg = holdout_mask(40, 50, 0.25, "regular").view(40, 50)
    assert reg[::2, ::2].all() and reg.sum() == 20 * 25  # test on every other pixel
    assert not holdout_mask(8, 8, 0.0).any()


def test_cosine_schedule_closed_form():
    # the schedule is a function of progress in [0, 1] (step / steps, or elapsed / time budget)
    assert cosine()(0.0) == pytest.approx(1.0)
    assert cosine(final=0.0)(0.5) == pytest.approx(0.5)
    assert cosine(final=0.01)(1.0) == pytest.approx(0.01)
    assert cosine(warmup=0.1)(0.05) == pytest.approx(0.5)


# quality thresholds measured on the 64x64 crop (seed 0): see docs/image.md
# (param budget, steps, lr_grid, lr_other, PSNR threshold); measured: dense 49.2 dB at 100 steps (R = 64
# is one node per pixel), hash 29.1 dB at 100 (18,883 params), planes 29.8 dB at 150 (19,323 params).
QUALITY = {"dense": (12_300, 100, 1e-1, 1e-2, 45.0), "hash": (20_000, 100, 1e-2, 1e-2, 27.0),
           "planes": (20_000, 150, 1e-1, 1e-2, 27.0)}


@pytest.mark.parametrize("model", sorted(QUALITY))
def test_fit_reaches_psnr(crop, model):
    if model not in grid_classes():
        pytest.skip(f"grid model {model!r} is not available yet")
    budget, steps, lr_grid, lr_other, threshold = QUALITY[model]
    torch.manual_seed(0)  # the initialisation (random linear/MLP decoder) matters
    field = image_field(model, 3, param_budget=budget)
    calls = []
    res = fit_image(field, crop, steps=steps, lr_grid=lr_grid, lr_other=lr_other, seed=0, progress=False,
                    eval_every=50, hooks=[lambda s, f, loss: calls.append(s)])
    assert calls == list(range(steps))
    assert [h["step"] for h in res.history] == list(range(0, steps + 1, 50))
    independent = psnr(render_image(field, 64, 64), crop)
    assert res.metrics["psnr"] == pytest.approx(independent, abs=1e-6)
    assert res.metrics["psnr"] > threshold, f"{model}: {res.metrics['psnr']:.2f} dB"


def test_holdout_reports_lower_test_psnr(crop):
    torch.manual_seed(0)
    field = image_field("dense", 3, param_budget=12_300)  # R = 64: one node per pixel
    res = fit_image(field, crop, steps=100, lr_grid=1e-1, holdout=0.25, seed=0, progress=False, eval_every=50)
    m = res.metrics
    assert m["holdout_fraction"] == pytest.approx(0.25, abs=1e-3)
    assert m["test_psnr"] < m["psnr"] - 5, m  # held-out nodes get no gradient: they stay at init
    assert "test_psnr" in res.history[-1]


def test_post_backward_hook_sees_gradients(crop):
    class Probe:
        def __init__(self):
            self.norms = []

        def step_post_backward(self, step, field, loss):
            self.norms.append(float(field.grid.features.grad.norm()))

    probe = Probe()
    fit_image(image_field("dense", 3, param_budget=12_300), crop, steps=3, progress=False, hooks=[probe])
    assert len(probe.norms) == 3 and all(n > 0 for n in probe.norms)


def test_checkpoint_roundtrip_and_resolution(tmp_path, crop):
    spec = image_field_spec("dense", 3, param_budget=5_000)
    field = image_field("dense", 3, param_budget=5_000)
    fit_image(field, crop, steps=20, lr_grid=1e-1, progress=False)
    save_checkpoint(tmp_path / "ck.pt", field, spec, crop.shape)
    again = load_checkpoint(tmp_path / "ck.pt")
    assert torch.equal(render_image(again, 64, 64), render_image(field, 64, 64))
    fine = render_image(again, 127, 127)  # 2x - 1: every other pixel centre is an original centre
    assert fine.shape == (127, 127, 3)
    assert torch.allclose(fine[::2, ::2], render_image(field, 64, 64), atol=1e-6)
    assert render_image(again, 20, 33).shape == (20, 33, 3)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
