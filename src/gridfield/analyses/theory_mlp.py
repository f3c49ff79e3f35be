"""Theorem 1 beyond linear models (part 4 of ``gridfield gtk-theory``): MLP decoders and a plain MLP.

For a model ``f(w, x)`` that is not linear in its parameters, Theorem 1 with the empirical NTK at
initialization ``G = J(w0) J(w0)^T`` (``J`` wrt *all* parameters) is exact for the *linearized* model
``f_lin(w) = f(w0) + J(w0) (w - w0)``; the real model departs from it as its kernel drifts (Theorem 2).
Per model and MLP width this part runs, from one initialization and with one step
``eta = eta_scale / lambda_max(G(0))`` on ``L = 1/2 ||O - Y||^2`` (full batch, every parameter):

1. the prediction ``O_t = Y + (I - eta G)^t (O_0 - Y)`` (:func:`~gridfield.gtk.dynamics.predict_dynamics`);
2. gradient descent on ``f_lin`` itself, with ``J`` and ``J^T`` applied by reverse-mode autograd
   (:func:`linearized_gd`): it shares no code with the kernel, so it checks the prediction;
3. gradient descent on the real model, measuring ``||G(t) - G(0)||_F / ||G(0)||_F`` along the way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp

from gridfield import presets
from gridfield.fields import Field
from gridfield.fields.decoders import MLPDecoder
from gridfield.fields.references import FourierFeatureMLP
from gridfield.gtk.dynamics import frequency_energy, predict_dynamics
from gridfield.gtk.fn import gtk_fn

GRID_MODELS = ("dense", "hash", "planes", "planes-product", "mulfagrid")
MLP_MODELS = (*GRID_MODELS, "ffmlp")
DEFAULT_MLP_MODELS = ("dense", "hash", "planes", "mulfagrid", "ffmlp")
HIDDEN_LAYERS = 2  # of every MLP here: the grid decoders and the Fourier-feature MLP
FFMLP = {"num_features": 32, "sigma": 2.0}  # the plain MLP's Fourier features (inputs in [-1, 1])


def build_mlp_model(name: str, width: int, feature_scale: float, seed: int = 0) -> nn.Module:
    """A float64 model ``[n, 2] -> [n, 1]`` whose every parameter is trained.

    A grid of the analysis line-up (``presets.get("analyses", name)``) with an :class:`MLPDecoder`
    (``HIDDEN_LAYERS`` ReLU layers of ``width``; PyTorch's default init), its feature tables drawn
    ``U(-feature_scale, feature_scale)`` (``planes-product``: ``U(0.1, 0.1 + 2 feature_scale)``, its
    factors must stay away from 0); or, for ``"ffmlp"``, a :class:`FourierFeatureMLP` of the same
    width and depth (``FFMLP`` features; ``feature_scale`` does not apply).
    """
    torch.manual_seed(seed)
    if name == "ffmlp":
        return FourierFeatureMLP(2, 1, width=width, depth=HIDDEN_LAYERS, seed=seed, **FFMLP).double()
    grid = presets.get("analyses", name).build(2)
    with torch.no_grad():
        for p in grid.grid_parameters().values():
            if name.endswith("product"):
                p.uniform_(0.1, 0.1 + 2 * feature_scale)
            else:
                p.uniform_(-feature_scale, feature_scale)
    return Field(grid, MLPDecoder(grid.out_dim, 1, width=width, hidden_layers=HIDDEN_LAYERS)).double()


def _params(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the trainable parameters, by name."""
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def linearized_gd(model: nn.Module, x: Tensor, y: Tensor, eta: float, steps: int) -> np.ndarray:
    """Gradient descent on ``f_lin(w) = f(w0) + J(w0)(w - w0)``, ``L = 1/2 ||f_lin - Y||^2``.

    x ``[n, d]``, y ``[n, c]`` -> outputs ``[steps + 1, n, c]``. ``J^T r`` is one vjp at ``w0``; ``J dw``
    is the vjp of that (linear) vjp, so only reverse mode is needed (``grid_sample`` has no forward AD).
    """
    w0 = _params(model)
    o0, jt = vjp(lambda p: functional_call(model, p, (x,)), w0)  # jt(r) = (J^T r,)
    _, jt_vjp = vjp(jt, torch.zeros_like(o0))
    dw = {k: torch.zeros_like(v) for k, v in w0.items()}
    out = o0.detach()
    outs = [out.numpy().copy()]
    for _ in range(steps):
        (grad,) = jt(out - y)
        dw = {k: dw[k] - eta * grad[k] for k in dw}
        (j_dw,) = jt_vjp((dw,))
        out = (o0 + j_dw).detach()
        outs.append(out.numpy().copy())
    return np.stack(outs)


def _ntk(kernel, x: Tensor) -> np.ndarray:
    """The empirical NTK over points and output channels, ``[n m, n m]`` (row ``i m + o``: point ``i``,
    channel ``o``), from ``kernel = gtk_fn(model, wrt="all", channels="full")``. With ``m > 1`` the
    channels need not share one kernel (an identity decoder on a multi-level grid gives each level's
    channels its own), so the channel-traced ``[n, n]`` kernel would not be exact."""
    g = kernel(x).matrix  # [n, n, m, m]
    n, m = g.shape[0], g.shape[2]
    return np.asarray(g, dtype=np.float64).transpose(0, 2, 1, 3).reshape(n * m, n * m)


def actual_gd(model: nn.Module, x: Tensor, y: Tensor, eta: float, steps: int, drift_every: int,
              g0: np.ndarray) -> dict:
    """Full-batch GD on every trainable parameter of ``model`` (in place), ``L = 1/2 ||O - Y||^2``.

    Returns ``outputs [T, n, c]`` (``T = steps + 1``, or fewer when it diverges: ``diverged_at`` is the
    first step with a non-finite or > 1e6 output), ``drift_steps`` and ``drift``
    (``||G(t) - G(0)||_F / ||G(0)||_F``, ``G`` wrt all parameters as in :func:`_ntk`, ``g0 = G(0)``
    ``[n c, n c]``, every ``drift_every`` steps and at the end).
    """
    kernel = gtk_fn(model, wrt="all", channels="full", check=False)
    w = [p for p in model.parameters() if p.requires_grad]
    norm0 = float(np.linalg.norm(g0))
    with torch.no_grad():
        outs = [model(x).numpy().copy()]
    d_steps, d_vals, diverged = [0], [0.0], None
    for step in range(1, steps + 1):
        grads = torch.autograd.grad(0.5 * ((model(x) - y) ** 2).sum(), w)
        with torch.no_grad():
            for p, gr in zip(w, grads):
                p -= eta * gr
            o = model(x).numpy().copy()
        if not np.isfinite(o).all() or np.abs(o).max() > 1e6:
            diverged = step
            break
        outs.append(o)
        if step % drift_every == 0 or step == steps:
            d_steps.append(step)
            d_vals.append(float(np.linalg.norm(_ntk(kernel, x) - g0)) / norm0)
    return {"outputs": np.stack(outs), "drift_steps": d_steps, "drift": d_vals, "diverged_at": diverged}


@dataclass
class LinearizationRun:
    """One model at one width: the prediction, the linearized and the actual GD (outputs ``[T, n, c]``)."""

    eta: float
    lambda_max: float
    n_params: int
    predicted: np.ndarray
    linearized: np.ndarray
    actual: np.ndarray
    targets: np.ndarray
    drift_steps: list[int]
    drift: list[float]
    diverged_at: int | None

    def loss(self, outputs: np.ndarray) -> np.ndarray:
        """``1/2 ||O_t - Y||^2`` per step: ``[T, n, c]`` -> ``[T]``."""
        return 0.5 * ((outputs - self.targets[None]) ** 2).sum((1, 2))

    def _r0(self) -> float:
        return float(np.linalg.norm(self.predicted[0] - self.targets))

    def linearized_error(self) -> float:
        """``max_t ||O_lin(t) - O_pred(t)||_2 / ||O_0 - Y||_2``: rounding only, if Theorem 1 holds for ``f_lin``."""
        return float(np.linalg.norm(self.linearized - self.predicted, axis=(1, 2)).max()) / self._r0()

    def output_gap(self) -> float:
        """``||O_act(T) - O_pred(T)||_2 / ||O_0 - Y||_2`` at the last (finite) actual step."""
        t = len(self.actual) - 1
        return float(np.linalg.norm(self.actual[t] - self.predicted[t])) / self._r0()

    def loss_gap(self) -> float:
        """``(L_act(T) - L_pred(T)) / L_pred(T)`` at the last actual step (negative: it trained faster)."""
        t = len(self.actual) - 1
        lp = self.loss(self.predicted)[t]
        return float((self.loss(self.actual)[t] - lp) / lp)

    def first_step_error(self) -> float | None:
        """``||dO_act - dO_pred|| / ||dO_pred||`` of the first step (``O(eta)``: first order is exact);
        ``None`` when the actual run diverged at once."""
        if len(self.actual) < 2:
            return None
        d_pred = self.predicted[1] - self.predicted[0]
        return float(np.linalg.norm(self.actual[1] - self.actual[0] - d_pred) / np.linalg.norm(d_pred))

    def summary(self, shape: tuple[int, int] | None = None) -> dict:
        """The numbers of the JSON (and, on a lattice ``shape``, the residual energy per frequency ring
        at the last actual step, predicted vs actual)."""
        res = {"eta": self.eta, "lambda_max": self.lambda_max, "n_params": self.n_params,
               "diverged_at": self.diverged_at, "loss_predicted": self.loss(self.predicted),
               "loss_linearized": self.loss(self.linearized), "loss_actual": self.loss(self.actual),
               "linearized_vs_predicted": self.linearized_error(), "output_gap_end": self.output_gap(),
               "loss_gap_end": self.loss_gap(), "first_step_error": self.first_step_error(),
               "drift_steps": self.drift_steps, "drift": self.drift, "drift_end": self.drift[-1]}
        if shape is not None:
            t = len(self.actual) - 1
            rings, e_pred = frequency_energy(self.predicted[t : t + 1] - self.targets[None], shape)
            _, e_act = frequency_energy(self.actual[t : t + 1] - self.targets[None], shape)
            res |= {"rings": rings, "ring_energy_predicted_end": e_pred[0], "ring_energy_actual_end": e_act[0]}
        return res


def linearization_run(model: nn.Module, x: Tensor, y: Tensor, steps: int, eta_scale: float = 0.5,
                      drift_every: int = 25) -> LinearizationRun:
    """Prediction, linearized GD and actual GD of ``model`` (a copy is trained) from the same ``w0``.

    x ``[n, d]``, y ``[n, c]`` (``c`` = the model's outputs; the prediction uses the ``[n c, n c]``
    kernel over points and channels). ``eta = eta_scale / lambda_max(G(0))``.
    """
    model = copy.deepcopy(model)
    x, y = x.double(), y.double()
    g0 = _ntk(gtk_fn(model, wrt="all", channels="full"), x)
    lam = float(np.linalg.eigvalsh(g0).max())
    eta = eta_scale / lam
    with torch.no_grad():
        o0 = model(x).clone()
    n, c = y.shape
    pred = predict_dynamics(g0, y.reshape(n * c, 1), o0.reshape(n * c, 1), eta=eta, steps=steps)
    lin = linearized_gd(model, x, y, eta, steps)
    act = actual_gd(model, x, y, eta, steps, drift_every, g0)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return LinearizationRun(eta, lam, n_params, pred.outputs.reshape(-1, n, c), lin, act["outputs"], y.numpy(),
                            act["drift_steps"], act["drift"], act["diverged_at"])


def sweep(models: tuple[str, ...], widths: tuple[int, ...], x: Tensor, y: Tensor, steps: int, eta_scale: float,
          drift_every: int, feature_scale: float, seed: int = 0) -> dict[tuple[str, int], LinearizationRun]:
    """:func:`linearization_run` for every ``(model, width)``; y ``[n, 1]``."""
    return {(m, w): linearization_run(build_mlp_model(m, w, feature_scale, seed), x, y, steps, eta_scale,
                                      drift_every)
            for m in models for w in widths}


def plot(ax_curves, ax_gap, runs: dict[tuple[str, int], LinearizationRun], widths: tuple[int, ...],
         color) -> None:
    """Loss curves (actual solid, predicted dashed, linearized GD as dots) on one axis per width, and the
    final output gap vs final drift on ``ax_gap``; ``color(model) -> colour``."""
    markers = "osD^v<>p*h"
    for k, w in enumerate(widths):
        ax = ax_curves[k]
        for (m, wm), r in runs.items():
            if wm != w:
                continue
            lin = r.loss(r.linearized)
            every = max(1, len(lin) // 10)
            ax.semilogy(r.loss(r.actual), color=color(m), label=f"{m} actual")
            ax.semilogy(r.loss(r.predicted), color=color(m), ls="--")
            ax.semilogy(np.arange(len(lin))[::every], lin[::every], color=color(m), ls="none", marker="o", ms=3,
                        mfc="none")
        ax.set_xlabel("gradient-descent step (all parameters)")
        ax.set_ylabel("loss 1/2 ||O - Y||^2")
        ax.set_title(f"MLP width {w}: actual (solid), predicted (dashed), linearized GD (o)", fontsize=8)
        ax.legend(fontsize=6)
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    for (m, w), r in runs.items():
        mk = markers[widths.index(w) % len(markers)]
        ax_gap.scatter(max(r.drift[-1], 1e-17), max(r.output_gap(), 1e-17), color=color(m), marker=mk, s=30)
    ax_gap.set_xscale("log")
    ax_gap.set_yscale("log")
    for axis in (ax_gap.xaxis, ax_gap.yaxis):  # plain numbers at 1, 2, 5 x 10^k (the range is a few decades)
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        axis.set_minor_formatter(FormatStrFormatter("%.2g"))
        axis.set_major_formatter(FormatStrFormatter("%.2g"))
    ax_gap.set_xlabel("drift at the end ||G(T) - G(0)||_F / ||G(0)||_F")
    ax_gap.set_ylabel("||O_act(T) - O_pred(T)|| / ||O_0 - Y||")
    ax_gap.set_title("prediction gap vs kernel drift (0 drawn at 1e-17)", fontsize=8)
    names = list(dict.fromkeys(m for m, _ in runs))
    handles = [Line2D([], [], color=color(m), marker="o", ls="none", label=m) for m in names]
    handles += [Line2D([], [], color="grey", marker=markers[k % len(markers)], ls="none", label=f"width {w}")
                for k, w in enumerate(widths)]
    ax_gap.legend(handles=handles, fontsize=6)
