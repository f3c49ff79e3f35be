"""The paper's theorems where they are exact: Theorem 1 (GD recursion), Theorem 2 (drift), and the
closed form of 1D linear interpolation with points on the nodes."""

import numpy as np
import pytest
import torch

from _gtk_models import one_torch_thread, small_field  # noqa: F401 (autouse fixture)
from gridfield.fields import Field, IdentityDecoder, make_decoder
from gridfield.grids import DenseGrid
from gridfield.gtk import bound, drift, eigenspectrum, fourier_spectrum, gtk, predict_dynamics


@pytest.mark.parametrize("name", ["dense", "hash"])
def test_theorem1_gradient_descent_is_exact_for_linear_models(name):
    """O_t = Y + (I - eta G)^t (O_0 - Y) for plain GD on L = 1/2 ||O - Y||^2 (grid features only)."""
    field = small_field(name, "linear", out=1, seed=1)
    for p in field.decoder.parameters():
        p.requires_grad_(False)  # a fixed linear read-out: linear in w with a fixed kernel
    x = torch.rand(40, 2, dtype=torch.float64) * 2 - 1
    y = torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])
    g = gtk(field, x).dense()
    eta = 1.0 / np.linalg.eigvalsh(g).max()
    with torch.no_grad():
        o0 = field(x).clone()
    pred = predict_dynamics(g, y, o0, eta=eta, steps=50)
    w = field.grid.features
    outs = [o0.numpy()]
    for _ in range(50):
        loss = 0.5 * ((field(x) - y) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w -= eta * grad
            outs.append(field(x).numpy())
    actual = np.stack(outs)
    scale = np.abs(actual).max()
    assert np.abs(pred.outputs - actual).max() / scale < 1e-8
    assert pred.loss[-1] < 0.5 * pred.loss[0]  # it did train
    np.testing.assert_allclose(pred.loss, 0.5 * ((actual - y.numpy()[None]) ** 2).sum((1, 2)), rtol=1e-8)


def test_theorem1_flow_matches_small_step_descent_and_mse_scaling():
    field = small_field("dense", "identity", seed=2)
    x = torch.rand(30, 2, dtype=torch.float64) * 2 - 1
    y = torch.randn(30, field.out_dim, dtype=torch.float64)
    g = gtk(field, x).dense()
    with torch.no_grad():
        o0 = field(x)
    n, c = y.shape
    gd = predict_dynamics(g, y, o0, eta=1e-3, steps=2000, loss_scale=2 / (n * c))
    flow = predict_dynamics(g, y, o0, times=[2000 * 1e-3], loss_scale=2 / (n * c))
    assert np.abs(gd.outputs[-1] - flow.outputs[-1]).max() < 1e-3 * np.abs(flow.outputs).max()


def test_theorem2_drift_zero_for_linear_nonzero_otherwise():
    x = torch.rand(64, 2, dtype=torch.float64) * 2 - 1
    y3 = torch.sin(4 * x).sum(1, keepdim=True).repeat(1, 3)
    for name in ("dense", "hash", "planes"):  # identity decoder, everything trained
        f = small_field(name, "identity", seed=3)
        tr = drift(f, x, torch.sin(4 * x[:, :1]).repeat(1, f.out_dim), steps=30, every=10, lr=1e-2)
        assert tr.loss[-1] < tr.loss[0] and max(tr.drift) < 1e-12, (name, tr.drift)
    lin = small_field("dense", "linear", seed=3)
    tr = drift(lin, x, y3, steps=30, every=10, train="grid")  # frozen linear read-out
    assert max(tr.drift) < 1e-12
    mlp = drift(small_field("dense", "mlp", seed=3), x, y3, steps=30, every=10, lr=1e-2)
    assert mlp.drift[-1] > 1e-2, mlp.drift
    f = small_field("planes-product", "identity", seed=3)
    prod = drift(f, x, torch.sin(4 * x[:, :1]).repeat(1, f.out_dim), steps=30, every=10, lr=1e-2)
    assert prod.drift[-1] > 1e-2 and not prod.linear_in_grid, prod.drift


def test_linear_interpolation_on_nodes_closed_form():
    """1D, one level, points on the nodes: J = I, so G = I, S(omega) = 1, B = sqrt(2 ||y||^2 / n)."""
    n = 33
    grid = DenseGrid(1, n, features_per_level=1).double()
    field = Field(grid, IdentityDecoder(1, 1))
    x = torch.linspace(-1, 1, n, dtype=torch.float64)[:, None]
    g = gtk(field, x)
    np.testing.assert_allclose(g.dense(), np.eye(n), atol=1e-12)
    np.testing.assert_allclose(fourier_spectrum(g, n).values, np.ones(n), atol=1e-12)
    spec = eigenspectrum(g)
    assert spec.condition_number == pytest.approx(1.0) and spec.effective_rank == pytest.approx(n)
    y = np.random.default_rng(0).normal(size=n)
    b = bound(g, y)
    assert b.value == pytest.approx(np.sqrt(2 * (y**2).sum() / n), rel=1e-12)
    assert b.normalized == pytest.approx(b.value) and not b.singular and b.lambda_min == pytest.approx(1.0)


def test_linear_decoder_kernel_scales_by_readout_norm():
    """Independent closed form: with D(f) = A f + b on one level, G = ||A||_F^2 / m * S S^T."""
    grid = DenseGrid(1, 9, features_per_level=2).double()
    dec = make_decoder("linear", 2, 3).double()
    x = torch.linspace(-1, 1, 17, dtype=torch.float64)[:, None]
    s = np.zeros((17, 9))
    u = (x[:, 0].numpy() + 1) * 4
    for i, ui in enumerate(u):  # hat functions of the 9 nodes, written out directly
        s[i] = np.clip(1 - np.abs(ui - np.arange(9)), 0, None)
    a = dec.weight.detach().numpy()
    expected = (a**2).sum() / 3 * s @ s.T
    np.testing.assert_allclose(gtk(Field(grid, dec), x).dense(), expected, rtol=1e-12, atol=1e-14)
