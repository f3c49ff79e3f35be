"""SDF fitting: eikonal double backward vs finite differences per grid model, a sphere fit, the CLI."""

import json

import numpy as np
import pytest
import torch

from gridfield.models import build_field, grid_classes
from gridfield.tasks.sdf import SDFConfig, eikonal_loss, fit_sdf, load_sdf_checkpoint, predict, run, tensor_sampler
from gridfield.training import TrainConfig

#: small configurations per grid model (models not listed use their constructor defaults)
SMALL = {
    "dense": dict(resolutions=[4, 7], features_per_level=2),
    "hash": dict(n_levels=2, features_per_level=2, log2_hashmap_size=6, base_resolution=4, per_level_scale=2.0),
    "planes": dict(resolutions=[4, 8], features_per_level=2),
    "mulfagrid": dict(resolutions=[4], features_per_level=2),
}


def small_field(model: str, seed: int = 0):
    torch.manual_seed(seed)
    field = build_field(model, 3, 1, decoder="linear", **SMALL.get(model, {})).double()
    with torch.no_grad():
        for p in field.parameters():  # away from the ~0 init, so every term matters
            p.copy_(torch.randn_like(p) * 0.5)
    return field


def smooth_points(field, n: int = 24, h: float = 1e-6) -> torch.Tensor:
    """Random points where the field is smooth along every axis: one-sided differences agree.

    n-linear interpolation has a piecewise-constant gradient that jumps across cell faces; within
    ``h`` of a face the forward and backward differences differ by the jump, so those points are
    dropped (inside a cell they differ by ``O(h f'')`` only).
    """
    x = torch.rand(4 * n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.6 - 0.8
    keep = torch.ones(len(x), dtype=torch.bool)
    with torch.no_grad():
        f0 = field(x)[:, 0]
        for j in range(3):
            e = torch.zeros(3, dtype=torch.float64)
            e[j] = h
            fwd, bwd = (field(x + e)[:, 0] - f0) / h, (f0 - field(x - e)[:, 0]) / h
            keep &= (fwd - bwd).abs() <= 1e-3 * (1 + fwd.abs())
    assert keep.sum() >= n // 2, "too few points away from cell faces"
    return x[keep][:n]


@pytest.mark.parametrize("model", sorted(grid_classes()))
def test_spatial_gradient_matches_finite_differences(model):
    field = small_field(model)
    x = smooth_points(field).requires_grad_(True)
    (g,) = torch.autograd.grad(field(x).sum(), x)
    h = 1e-6
    for j in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[j] = h
        with torch.no_grad():
            fd = (field(x + e) - field(x - e))[:, 0] / (2 * h)
        torch.testing.assert_close(g[:, j], fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("model", sorted(grid_classes()))
def test_eikonal_double_backward_matches_finite_differences(model):
    field = small_field(model)
    x = smooth_points(field)
    params = [p for p in field.parameters() if p.requires_grad]
    grads = torch.autograd.grad(eikonal_loss(field, x), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]  # the bias is unused
    grid_names = set(field.grid_parameters())
    named = dict(field.named_parameters())
    assert any(grads[i].abs().sum() > 0 for i, p in enumerate(params)
               if any(p is named[k] for k in grid_names)), "no gradient reached the grid features"
    v = [torch.randn_like(p) for p in params]
    eps = 1e-6

    def shifted(sign):
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(sign * eps * d)
        val = float(eikonal_loss(field, x).detach())
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(sign * eps * d)
        return val

    fd = (shifted(1) - shifted(-1)) / (2 * eps)
    analytic = float(sum((g * d).sum() for g, d in zip(grads, v)))
    assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8)



def test_sphere_fit_reaches_iou(one_thread):
    trimesh = pytest.importorskip("trimesh")
    from gridfield.data.meshes import sample_sdf
    from gridfield.metrics_sdf import iou_grid

    r = 0.5
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=r)
    pts, sdf = sample_sdf(sphere, 40_000, seed=0)
    torch.manual_seed(0)
    field = build_field("dense", 3, 1, decoder="linear", resolutions=[16], features_per_level=2)
    val_x = torch.rand(8192, 3) * 2 - 1
    hist = fit_sdf(field, tensor_sampler(torch.from_numpy(pts), torch.from_numpy(sdf)), steps=200,
                   batch=4096, lr_grid=3e-2, lr_other=3e-3, val=(val_x, val_x.norm(dim=1) < r), eval_every=50)
    assert hist[-1]["iou_est"] > hist[0]["iou_est"]
    got = iou_grid(lambda p: predict(field, torch.from_numpy(p)).numpy(),
                   lambda p: np.linalg.norm(p, axis=1) < r, 64)
    assert got >= 0.98


def test_time_budget_shortens_the_run():
    field = small_field("dense").float()
    x = torch.rand(256, 3) * 2 - 1
    hist = fit_sdf(field, tensor_sampler(x, x.norm(dim=1) - 0.5), steps=10_000, batch=64,
                   val=(x, x.norm(dim=1) < 0.5), eval_every=1, max_seconds=0.2)
    steps = [h["step"] for h in hist]
    assert steps == list(range(len(steps))) and 2 <= len(steps) < 10_000  # progress = elapsed / budget
    assert hist[-1]["seconds"] >= 0.2


def test_cli_run_writes_outputs_in_original_frame(tmp_path, monkeypatch, one_thread):
    pytest.importorskip("igl")
    from gridfield.data.meshes import torus_knot_mesh

    monkeypatch.setenv("GRIDFIELD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    cfg = SDFConfig(batch_size=2048, samples=20_000, param_budget=30_000, iou_resolution=32, mesh_resolution=32,
                    iou_points=20_000, chamfer_points=2000,
                    train=TrainConfig(steps=60, lr_grid=1e-2, lr_other=1e-2, progress=False, out=out))
    metrics = run(cfg)
    names = {"metrics.json", "mesh.ply", "sdf_slices.png", "preview.png", "history.json", "checkpoint.pt"}
    assert names <= {p.name for p in out.iterdir()}
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("iou_grid", "iou_points", "chamfer_l1", "chamfer_l2", "fscore@0.01", "fscore@0.002",
                "normal_consistency", "params", "train_seconds"):
        assert key in saved and key in metrics
    assert 0 < saved["iou_grid"] <= 1
    import trimesh

    exported = trimesh.load(out / "mesh.ply")
    ref = torus_knot_mesh()
    np.testing.assert_allclose(exported.bounds, ref.bounds, atol=0.15 * np.ptp(ref.bounds))
    # the checkpoint rebuilds the field: its zero level set holds the exported vertices
    field, norm = load_sdf_checkpoint(out / "checkpoint.pt")
    v = torch.from_numpy(norm.to_unit(exported.vertices[:500]).astype(np.float32))
    assert predict(field, v).abs().max() < 2 / 31  # one lattice edge


def test_cli_bad_mesh_is_one_line_error(tmp_path, capsys):
    from gridfield.cli import main

    out = tmp_path / "never"
    assert main(["sdf", str(tmp_path / "missing.obj"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "missing.obj" in err and "\n" not in err
    assert not out.exists()
