"""MulFAGrid fast path: a fused C++/OpenMP kernel per support term (``csrc/mulfa.cpp``).

Same result as the plain-PyTorch reference ``MulFAGrid.forward`` (``[N, d] -> [N, C]``); like
:mod:`gridfield.fast.grid_encode` it sees no grid object, only a :class:`MulFASpec` of plain numbers
and the tensors (points, table, kernel parameters) passed explicitly. For each support term the
kernel evaluates the layout's ``U(x)``, the MFN kernel network, the form's normalisation and the gather
``sum_k phi_k w_k`` in one pass per point; the terms are then aggregated (concatenated / summed /
multiplied) with ordinary PyTorch ops. Backward is hand-written: gradients of the
grid features and of every kernel parameter, recomputing the per-point forward instead of saving
activations. Not supported (the caller uses the reference): gradients wrt ``x`` (SDF eikonal losses,
double backward), ``torch.func`` transforms (GTK Jacobians), non-CPU tensors, dtypes other than
float32/float64, x86-64 CPUs without AVX2/FMA (the kernel is compiled for AVX2 only, to keep the build
near a minute). The backward itself is not differentiable (``create_graph`` through it raises, via
``once_differentiable``). Compiled on first use (see :mod:`gridfield.fast._build`; about a minute and a
half on a 2-core machine, then cached on disk); nothing happens at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gridfield.fast._build import FastPathUnavailable, want_fast

try:  # a private torch API: absent in very old versions
    from torch._C._functorch import peek_interpreter_stack
except ImportError:  # pragma: no cover
    peek_interpreter_stack = None

NAME = "gridfield_mulfa"
SOURCES = ("mulfa.cpp",)
FORM_CODES = {"stable": 0, "paper": 1}


@dataclass(frozen=True)
class MulFATerm:
    """One support term: a lattice over input ``axes`` with ``resolution`` nodes per axis whose rows start
    at ``offset`` in the table; its kernel network has ``frequencies`` octaves and ``layers`` filter
    layers; it writes the output ``channels`` ``(start, stop)``."""

    axes: tuple[int, ...]
    resolution: int
    offset: int
    frequencies: int
    layers: int
    channels: tuple[int, int]
    hash_scale: float | None = None  # a hash level: tcnn's scale (see grids.mulfagrid.Lattice)
    hashed: bool = False
    size: int = 0
    factors: tuple[int, ...] = ()

    @property
    def n_params(self) -> int:
        """Kernel tensors of the term: ``W0, b0, .., W_{layers-1}, b_{layers-1}, theta, psi, w_out, b_out``."""
        return 2 * self.layers + 4


@dataclass(frozen=True)
class MulFASpec:
    """Plain numbers describing one MulFAGrid for the kernel (the tensors are passed beside it).

    form: ``"stable"`` or ``"paper"``; paper_eps / floor: their constants; aggregate: ``"sum"`` or
    ``"product"`` over terms writing the same channels; out_dim: the channel count they tile.
    """

    terms: tuple[MulFATerm, ...]
    form: str
    paper_eps: float
    floor: float
    aggregate: str
    out_dim: int

    @property
    def n_params(self) -> int:
        return sum(t.n_params for t in self.terms)


def _transforms_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jacrev) is running (the kernel does not support them)."""
    return peek_interpreter_stack is not None and peek_interpreter_stack() is not None


def fast_applies(spec: MulFASpec, x: Tensor, tensors: Sequence[Tensor]) -> tuple[bool, str]:
    """``(applies, why not)`` of the fused CPU kernel for this grid (``spec``; ``tensors``: its table and
    kernel parameters) and these points ``x`` ``[N, d]``."""
    if x.device.type != "cpu":
        return False, f"no {x.device.type} kernel (CPU only)"
    if x.dtype not in (torch.float32, torch.float64):
        return False, f"dtype {x.dtype} (float32 or float64 only)"
    if any(p.dtype != x.dtype or p.device.type != "cpu" for p in tensors):
        return False, "the points, features and kernel parameters must share dtype and device"
    if x.requires_grad and torch.is_grad_enabled():
        return False, "gradients wrt x (eikonal / double backward) are only in the reference"
    if _transforms_active():
        return False, "torch.func transforms (vmap/jacrev) run the reference"
    if any(len(t.axes) > 3 for t in spec.terms):
        return False, "lattices with more than 3 axes"
    return True, ""


def resolve(backend: str, spec: MulFASpec, x: Tensor, table: Tensor, params: Sequence[Tensor]):
    """The compiled module when the fast path is to be used for this call, else ``None`` (reference).

    ``backend == "fast"`` raises :class:`~gridfield.fast.FastPathUnavailable` when it cannot apply.
    """
    ok, why = fast_applies(spec, x, [table, *params])
    ext = want_fast(backend, NAME, SOURCES, ok, why)
    if ext is not None and not ext.cpu_supported():  # x86-64 without AVX2/FMA
        if backend == "fast":
            raise FastPathUnavailable(f"fast path '{NAME}' needs a CPU with AVX2 and FMA")
        return None
    return ext


class _Terms(torch.autograd.Function):
    """Values ``[N, F]`` of every support term; differentiable in the table and the kernel parameters."""

    @staticmethod
    def forward(ctx, ext, spec, x, table, *params):
        ctx.ext, ctx.spec = ext, spec
        ctx.save_for_backward(x, table, *params)
        return tuple(ext.term_forward(x, table, *geo, *_packed(p)) for geo, p in _split(spec, params))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *dvals):
        x, table, *params = ctx.saved_tensors
        ext, spec = ctx.ext, ctx.spec
        need = ctx.needs_input_grad
        dtable = torch.zeros_like(table) if need[3] else None
        grads: list[Tensor | None] = []
        start = 4
        for (geo, p), dval in zip(_split(spec, params), dvals):
            n_p = len(p)
            kernel_grad = any(need[start : start + n_p])
            if dval is None or not (kernel_grad or dtable is not None):
                grads += [None] * n_p
                start += n_p
                continue
            g = ext.term_backward(x, table, *geo, *_packed(p), dval.contiguous(), kernel_grad, dtable)
            grads += _unpacked(g, p) if kernel_grad else [None] * n_p
            start += n_p
        return (None, None, None, dtable, *grads)


def _split(spec: MulFASpec, params):
    """Per term: ``((axes, r, offset, L, form, paper_eps, floor, hash_level), its parameter list)``;
    ``hash_level`` is ``[]`` or ``[scale, hashed, size, *factors]`` (a hash level)."""
    i, form = 0, FORM_CODES[spec.form]
    for t in spec.terms:
        hash_level = [] if t.hash_scale is None else [t.hash_scale, float(t.hashed), t.size, *t.factors]
        yield (list(t.axes), t.resolution, t.offset, t.frequencies, form, spec.paper_eps, spec.floor,
               [float(v) for v in hash_level]), params[i : i + t.n_params]
        i += t.n_params


def _packed(p) -> list[Tensor]:
    """A term's parameters in the kernel's order ``W0, b0, Wh [M-1, W, W], bh [M-1, W], theta, psi, wout, bout``."""
    w0, b0, *hidden = p[:-4]
    theta, psi, wout, bout = p[-4:]
    width = theta.shape[1]
    if hidden:
        wh = torch.stack(hidden[0::2])
        bh = torch.stack(hidden[1::2])
    else:
        wh = theta.new_zeros(0, width, width)
        bh = theta.new_zeros(0, width)
    return [w0.contiguous(), b0.contiguous(), wh, bh, theta.contiguous(), psi.contiguous(),
            wout.contiguous(), bout.contiguous()]


def _unpacked(g: list[Tensor], p) -> list[Tensor]:
    """Gradients from the kernel's order back to the per-parameter list (:attr:`MulFATerm.n_params`)."""
    dw0, db0, dwh, dbh, dth, dpsi, dwout, dbout = g
    hidden: list[Tensor] = []
    for w, b in zip(dwh.unbind(0), dbh.unbind(0)):
        hidden += [w, b]
    return [dw0, db0, *hidden, dth, dpsi, dwout.view_as(p[-2]), dbout.view_as(p[-1])]


def mulfa_forward(ext, spec: MulFASpec, x: Tensor, table: Tensor, params: Sequence[Tensor]) -> Tensor:
    """Fast MulFAGrid forward: ``x [N, d]`` -> ``[N, spec.out_dim]``, differentiable in ``table`` ``[rows, F]``
    and ``params`` (every term's kernel tensors in the order of :attr:`MulFATerm.n_params`, term after term)."""
    if len(params) != spec.n_params:
        raise ValueError(f"MulFAGrid fast path: {len(params)} kernel tensors for a spec of {spec.n_params}")
    if torch.isnan(x).any():
        raise ValueError("MulFAGrid got NaN points")
    vals = _Terms.apply(ext, spec, x.contiguous(), table, *params)
    return aggregate(vals, [t.channels for t in spec.terms], spec.aggregate, spec.out_dim)


def aggregate(vals, channels: list[tuple[int, int]], how: str, out_dim: int) -> Tensor:
    """Terms writing the same channel block are summed (``"sum"``) or multiplied (``"product"``); blocks
    are concatenated in channel order (they tile ``[0, out_dim)``)."""
    blocks: dict[tuple[int, int], Tensor] = {}
    for v, key in zip(vals, channels):
        if key not in blocks:
            blocks[key] = v
        else:
            blocks[key] = blocks[key] * v if how == "product" else blocks[key] + v
    keys = sorted(blocks)
    if keys[0][0] != 0 or keys[-1][1] != out_dim:
        raise RuntimeError(f"MulFAGrid: term channels {keys} do not tile {out_dim}")
    return torch.cat([blocks[k] for k in keys], dim=1) if len(keys) > 1 else blocks[keys[0]]
