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


# ------------------------------------------------------------------------------------------------
# Theorem 1 beyond linear models (gridfield.analyses.theory_mlp): the empirical NTK wrt all parameters
# ------------------------------------------------------------------------------------------------
def _points_and_target(n: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1
    return x, torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])


def _smooth_mlp_field(name: str, width: int = 16, seed: int = 1) -> Field:
    """A grid with a tanh MLP decoder (1 output): smooth in every parameter, so the first GD step's
    departure from the linear prediction is exactly the second-order Taylor term, up to O(eta^3)."""
    grid = small_field(name, "identity", seed=seed).grid
    torch.manual_seed(seed + 1)
    dec = torch.nn.Sequential(torch.nn.Linear(grid.out_dim, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                              torch.nn.Tanh(), torch.nn.Linear(width, 1))
    dec.out_dim = 1
    return Field(grid, dec).double()


@pytest.mark.parametrize("name", ["dense", "planes", "ffmlp"])
def test_theorem1_linearized_gd_equals_prediction_for_mlp_models(name):
    """GD on f_lin(w) = f(w0) + J(w0)(w - w0) (reverse-mode J and J^T, no kernel) follows the prediction
    from gtk_fn's G = J J^T (structured path for the grids) to rounding; planes: grid_sample, no forward AD."""
    from gridfield.analyses import theory_mlp as tm

    x, y = _points_and_target()
    model = tm.build_mlp_model("ffmlp", 16, 1.0) if name == "ffmlp" else small_field(name, "mlp", out=1, seed=1)
    run = tm.linearization_run(model, x, y, steps=40, eta_scale=1.0, drift_every=20)
    lin, pred = run.loss(run.linearized), run.loss(run.predicted)
    assert pred[-1] < 0.7 * pred[0], pred  # it trained: the check is not on a still model
    assert run.linearized_error() < 1e-8, run.linearized_error()
    np.testing.assert_allclose(lin, pred, rtol=1e-8)
    assert run.output_gap() > 1e-4 and run.drift[-1] > 1e-3, (run.output_gap(), run.drift)  # nonlinear: departs


@pytest.mark.parametrize("name", ["dense", "hash"])
def test_theorem1_first_step_is_exact_to_first_order_for_mlp_decoders(name):
    """Actual first step minus predicted first step = eta^2/2 f''(w0)[g, g] + O(eta^3), g = -dL/dw."""
    from torch.func import functional_call, jvp

    from gridfield.analyses import theory_mlp as tm

    x, y = _points_and_target()
    field = _smooth_mlp_field(name)
    fn = lambda p: functional_call(field, p, (x,))  # noqa: E731
    w0 = {k: v.detach().clone().requires_grad_(True) for k, v in field.named_parameters()}
    grads = torch.autograd.grad(0.5 * ((fn(w0) - y) ** 2).sum(), list(w0.values()))
    w0 = {k: v.detach() for k, v in w0.items()}
    for scale in (0.5, 0.1):
        run = tm.linearization_run(field, x, y, steps=1, eta_scale=scale, drift_every=1)
        step = {k: -run.eta * g for k, g in zip(w0, grads)}
        second = 0.5 * jvp(lambda p, s=step: jvp(fn, (p,), (s,))[1], (w0,), (step,))[1].numpy()  # [n, 1]: O(eta^2)
        d_pred = run.predicted[1] - run.predicted[0]
        gap = run.actual[1] - run.actual[0] - d_pred
        assert np.linalg.norm(gap) > 1e-3 * np.linalg.norm(second), scale  # the model is not linear
        # the remainder after the second-order term is O(eta^3): 20% of it at 0.5 / lambda_max, 4% at 0.1
        assert np.linalg.norm(gap - second) < 0.4 * scale * np.linalg.norm(second), scale
        assert np.linalg.norm(gap) < scale * 0.05 * np.linalg.norm(d_pred), scale  # first order dominates
        assert run.drift[-1] > 0


def test_theorem1_relu_mlp_first_step_gap_is_second_order():
    """The project's ReLU MLP decoder (kinks: no Taylor term to compare): halving eta quarters the gap."""
    from gridfield.analyses import theory_mlp as tm

    x, y = _points_and_target()
    field = small_field("dense", "mlp", out=1, seed=1)
    err = [tm.linearization_run(field, x, y, steps=1, eta_scale=s).first_step_error() for s in (0.4, 0.2, 0.1)]
    # first_step_error is relative to the (O(eta)) predicted step, so O(eta^2) gaps halve with eta
    assert 0 < err[2] < 0.7 * err[1] < 0.49 * err[0] and err[0] < 0.05, err


@pytest.mark.parametrize("name", ["dense", "planes"])
def test_theorem1_harness_gap_is_zero_for_a_linear_model(name):
    """Identity decoder: linear in all parameters, one shared kernel per channel: no gap, no drift."""
    from gridfield.analyses import theory_mlp as tm

    x, _ = _points_and_target()
    field = small_field(name, "identity", seed=2)
    y = torch.sin(3 * x[:, :1] + torch.arange(field.out_dim, dtype=torch.float64)) * torch.cos(2 * x[:, 1:])
    run = tm.linearization_run(field, x, y, steps=30, eta_scale=1.0, drift_every=10)
    assert run.loss(run.actual)[-1] < 0.5 * run.loss(run.actual)[0]
    assert run.output_gap() < 1e-10 and run.linearized_error() < 1e-10, (run.output_gap(), run.linearized_error())
    assert abs(run.loss_gap()) < 1e-10 and max(run.drift) < 1e-12 and run.first_step_error() < 1e-10


def test_theorem1_mlp_part_of_gtk_theory_runs_and_checks_options(tmp_path):
    from gridfield.analyses.theory import TheoryConfig, run
    from gridfield.errors import InputError

    small = dict(models=("dense",), fit_models=("dense",), side=4, gd_steps=2, adam_steps=2, drift_every=1,
                 image="camera", image_size=8, fit_steps=2, mlp_models=("dense", "ffmlp"), mlp_widths=(4, 8),
                 mlp_steps=4, mlp_drift_every=2)
    for bad, option in ((dict(mlp_eta=2.0), "--mlp-eta"), (dict(mlp_eta=float("nan")), "--mlp-eta"),
                        (dict(mlp_models=("nosuch",)), "--mlp-models"), (dict(mlp_widths=()), "--mlp-widths"),
                        (dict(mlp_widths=(8, 8)), "--mlp-widths"), (dict(mlp_feature_scale=0.0), "--mlp-feature"),
                        (dict(mlp_steps=0), "--mlp-steps")):
        with pytest.raises(InputError, match=option):
            run(TheoryConfig(out=tmp_path / "bad", **(small | bad)))
        assert not (tmp_path / "bad").exists()
    payload = run(TheoryConfig(out=tmp_path / "out", **small))
    runs = payload["theorem1_mlp"]["runs"]
    assert set(runs) == {"dense/width4", "dense/width8", "ffmlp/width4", "ffmlp/width8"}
    for r in runs.values():
        assert len(r["loss_actual"]) == 5 and r["drift_steps"] == [0, 2, 4] and r["linearized_vs_predicted"] < 1e-8
    assert (tmp_path / "out" / payload["figures"]["dynamics_mlp"]).is_file()
