"""Smoke test of ``benchmarks/mulfagrid_gtk.py``: its GTK quantities against direct NumPy computations."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def mg():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("mulfagrid_gtk", BENCH / "mulfagrid_gtk.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


def explicit_gtk(field, x: torch.Tensor) -> np.ndarray:
    """``J J^T`` from one autograd gradient per point, wrt the grid features only (out_dim 1)."""
    feats = list(field.grid_parameters().values())
    rows = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(field(x[i : i + 1]).sum(), feats)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    j = torch.stack(rows).numpy()
    return j @ j.T


def test_trace_normalized_bound_matches_numpy(mg, one_thread):
    """MulFAGrid on a tiny hash layout (hash collisions): the benchmark's bound of the library GTK equals
    ``sqrt(2 y^T Gn^-1 y / n)`` on the explicit, trace-normalized ``Gn`` solved with NumPy."""
    field = mg.build("mf-hash", {"log2_hashmap_size": 4, "finest_resolution": 8}, seed=3).double()
    assert any(field.grid.layout._hashed)  # rows are shared by hashing
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(10, 2, generator=gen, dtype=torch.float64) * 2 - 1
    y = torch.randn(10, 1, generator=gen, dtype=torch.float64)
    g_lib = mg.gtk(field, x, wrt="grid", implementation="structured")
    b = mg.trace_normalized_bound(g_lib, y)
    g = explicit_gtk(field, x)
    np.testing.assert_allclose(g_lib.dense(), g, rtol=1e-9, atol=1e-12 * np.abs(g).max())
    gn = g / (np.trace(g) / len(g))
    assert np.linalg.eigvalsh(gn)[0] > 1e-8  # no ridge involved
    direct = np.sqrt(2 * float(y.numpy()[:, 0] @ np.linalg.solve(gn, y.numpy()[:, 0])) / len(g))
    assert b.ridge == 0.0 and not b.singular
    assert b.normalized == pytest.approx(direct, rel=1e-8)
    # with a forced ridge: (Gn + ridge I)^-1
    br = mg.trace_normalized_bound(g_lib, y, ridge=1e-2)
    direct_r = np.sqrt(2 * float(y.numpy()[:, 0] @ np.linalg.solve(gn + 1e-2 * np.eye(len(g)), y.numpy()[:, 0]))
                       / len(g))
    assert br.normalized == pytest.approx(direct_r, rel=1e-8)


def test_spearman_and_spectrum_measures(mg):
    a = np.arange(7.0)
    assert mg.spearman(a, a**3 + 1) == pytest.approx(1.0)
    assert mg.spearman(a, -np.exp(a)) == pytest.approx(-1.0)
    assert np.isnan(mg.spearman(a, np.ones(7)))
    flat = mg.spectrum_measures(np.full(64, 2.5), topk=4)
    assert flat["effective_rank"] == pytest.approx(64.0)
    assert flat["topk_energy"] == pytest.approx(4 / 64)
    assert flat["decay_exponent"] == pytest.approx(0.0, abs=1e-9)
    power = mg.spectrum_measures(np.arange(1, 257.0) ** -2.0, topk=1)
    assert power["decay_exponent"] == pytest.approx(2.0, rel=1e-9)


def test_high_frequency_fraction_of_an_identity_kernel(mg, one_thread):
    """A dense grid with one node per pixel and a linear decoder has ``G = c I`` on the pixel lattice: a
    flat spectrum, so the high-frequency share is the share of lattice frequencies above the cutoff."""
    field = mg.build("dense", {"resolutions": 8}, seed=0).double()
    hf = mg.high_frequency_fraction(field, 8, 8, cutoff=2.0)
    f = np.fft.fftfreq(8) * 8
    r = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    assert hf == pytest.approx((r > 2.0).mean(), rel=1e-6)  # pixel_coords are float32: nodes off by ~1e-8


def test_training_points_are_the_fit_training_pixels(mg):
    h = w = 12
    test = mg.holdout_mask(h, w, 0.5, "random", torch.Generator().manual_seed(5))
    idx = mg.training_points(h, w, 0.5, 5, max_points=10_000)
    assert torch.equal(idx, torch.nonzero(~test).squeeze(1))
    sub = mg.training_points(h, w, 0.5, 5, max_points=20)
    assert sub.numel() == 20 and bool((~test)[sub].all()) and bool((sub[1:] > sub[:-1]).all())
