"""Fused multi-level grid encoding (HashGrid and DenseGrid forward), C++/OpenMP on CPU.

Same result as the grids' plain-PyTorch forward (``index_select`` + ``einsum`` over ``[N, L, 2**d, F]``
intermediates), computed point by point without intermediates (``csrc/grid_encode.cpp``). Autograd:

* backward: grad wrt the table (scatter-add of ``grad_out * weight``) and wrt ``x`` (derivative of the
  n-linear weights times the per-level scale of the position mapping; zero where a dense level clamps);
* double backward: the backward is itself differentiable wrt ``grad_out``, the table and ``x`` (the
  cross terms of the n-linear weights), as an eikonal loss (``grad_x`` with ``create_graph=True``)
  needs; a third derivative raises (``once_differentiable``).

The table gradient is written into a buffer reused from the previous backward when nothing but this
module's cache still holds it (:func:`grad_buffer`: after ``zero_grad(set_to_none=True)``), so a step
does not allocate, page-fault and free a table-sized tensor (~100 MB for a 256^3 x 12 grid). It is
never reused while anyone (``param.grad``, a gradient returned and kept) holds it, nor when the backward
builds a graph (``create_graph=True``): then it is a fresh tensor.

:func:`encoder_for` picks the kernel for a call (``backend="auto" | "fast" | "reference"``, see
:mod:`gridfield.fast._build`): the C++ kernel for CPU float32/float64 tensors; under ``torch.func``
transforms (``jacrev``/``vmap``, used by the GTK reference) always the reference; on CUDA the
reference until a CUDA kernel sits beside the CPU one (same arguments; add it in :func:`encoder_for`).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from gridfield.fast._build import check_backend, want_fast

try:  # a private torch API (see _engine_wants)
    from torch.autograd.graph import _get_grad_fn_or_grad_acc
except ImportError:  # pragma: no cover - other torch versions
    _get_grad_fn_or_grad_acc = None

NAME = "gridfield_grid_encode"
SOURCES = ("grid_encode.cpp",)
HASH, DENSE = 0, 1
STRATEGIES = {"auto": 0, "levels": 1, "atomic": 2, "per_thread": 3, "rows": 4}


@dataclass(frozen=True, eq=False)
class EncodeSpec:
    """Per-level constants of one grid (CPU tensors, built once per grid).

    mode: ``HASH`` (tcnn mapping ``pos = (x + 1) / 2 * scale + 0.5``, no clamping) or ``DENSE``
    (``u = (x + 1) * (R - 1) / 2`` clamped to the border). meta_i ``[L, 6]`` int64: row offset, rows,
    hashed flag, 3 per-axis factors (primes or dense strides). meta_f ``[L, 2]`` float64: scale, ``R - 1``.
    strategy: how threads share the table-grad scatter (``STRATEGIES``; ``auto``: whole levels per
    thread when there are at least as many levels as threads, else ``rows``: every thread sweeps all
    points and adds only into its own block of table rows, no atomics; ``atomic`` and ``per_thread``
    are kept for measurements).
    """

    mode: int
    dim: int
    meta_i: Tensor
    meta_f: Tensor
    strategy: int = 0

    @property
    def n_levels(self) -> int:
        return self.meta_i.shape[0]

    def with_strategy(self, name: str) -> EncodeSpec:
        """The same spec with another scatter strategy (benchmarks)."""
        return EncodeSpec(self.mode, self.dim, self.meta_i, self.meta_f, STRATEGIES[name])


def make_spec(mode: int, dim: int, offsets: Sequence[int], sizes: Sequence[int], hashed: Sequence[bool],
              factors: Sequence[Sequence[int]], scales: Sequence[float], tops: Sequence[float]) -> EncodeSpec:
    """Build an :class:`EncodeSpec` from per-level lists (``factors[l]`` has ``dim`` entries < 2**32)."""
    rows = []
    for off, size, h, fac in zip(offsets, sizes, hashed, factors):
        fac = list(fac) + [0] * (3 - len(fac))
        rows.append([int(off), int(size), int(bool(h))] + [int(v) for v in fac])
    meta_i = torch.tensor(rows, dtype=torch.int64).reshape(-1, 6)
    meta_f = torch.tensor([[float(s), float(t)] for s, t in zip(scales, tops)], dtype=torch.float64).reshape(-1, 2)
    return EncodeSpec(mode, dim, meta_i, meta_f)


def encoder_for(backend: str, table: Tensor, x: Tensor, applies: bool = True, why: str = ""):
    """The compiled kernel module for ``grid_encode(table, x)``, or ``None`` to use the reference.

    applies / why: the caller's own condition (e.g. a subclass that redefines the support).
    Raises :class:`~gridfield.fast.FastPathUnavailable` when ``backend="fast"`` and no kernel applies.
    """
    if check_backend(backend) == "reference":
        return None
    if torch._C._are_functorch_transforms_active():  # torch.func traces the reference (same values)
        return None
    if not applies:
        return want_fast(backend, NAME, SOURCES, False, why)
    dtypes = (torch.float32, torch.float64)
    if x.device.type == "cpu" and table.device.type == "cpu":
        ok = table.dtype == x.dtype and table.dtype in dtypes
        return want_fast(backend, NAME, SOURCES, ok,
                         f"needs matching float32/float64 table and points, got {table.dtype} and {x.dtype}")
    return want_fast(backend, NAME, SOURCES, False, f"no kernel for device {x.device.type} yet")


def grid_encode(mod, table: Tensor, x: Tensor, spec: EncodeSpec) -> Tensor:
    """Features ``[N, L * F]`` of points ``x`` ``[N, d]`` from the table ``[rows, F]``.

    ``mod`` from :func:`encoder_for`. Differentiable in ``table`` and ``x``, twice (see the module doc).
    """
    if x.shape[1] != spec.dim:
        raise ValueError(f"grid_encode: spec is for dim {spec.dim}, got points {tuple(x.shape)}")
    return _Encode.apply(table.contiguous(), x.contiguous(), mod, spec)


def grid_support(mod, x: Tensor, spec: EncodeSpec, rows: int) -> tuple[Tensor, Tensor]:
    """``(index int64 [N, L, 2**d], weight [N, L, 2**d])``: global table rows and n-linear weights of every
    point and level (the grids' ``all_levels_support``), computed point by point; not differentiable.

    ``mod`` from :func:`encoder_for`; rows: the table's row count (the levels must fit inside it).
    """
    if x.shape[1] != spec.dim:
        raise ValueError(f"grid_support: spec is for dim {spec.dim}, got points {tuple(x.shape)}")
    index, weight = mod.support(x.detach().contiguous(), spec.meta_i, spec.meta_f, spec.mode, int(rows))
    return index, weight


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


_GRAD_BUFFERS: dict[int, list[Tensor]] = {}  # id(table) -> reusable gradient buffers, dropped with the table
_POOL = 2  # buffers per table: a first- and a second-order (eikonal) table gradient in one backward


def grad_buffer(table: Tensor) -> Tensor:
    """An uninitialised tensor shaped like ``table`` for its gradient: one of this table's cached buffers
    that nobody else holds (its storage referenced by the cache alone), else a new one (cached while
    the pool has room). A buffer handed out earlier and still held (``param.grad`` kept, a returned
    gradient kept, a second use in the same backward) is never returned."""
    key = id(table)
    pool = _GRAD_BUFFERS.get(key)
    if pool is None:
        pool = _GRAD_BUFFERS[key] = []
        weakref.finalize(table, _GRAD_BUFFERS.pop, key, None)
    for i, buf in enumerate(pool):
        if buf.shape != table.shape or buf.dtype != table.dtype or buf.device != table.device:
            pool[i] = buf = torch.empty_like(table, memory_format=torch.contiguous_format)
            return buf
        if torch._C._storage_Use_Count(buf.untyped_storage()._cdata) <= 2:  # the cache's + this temporary's
            return buf
    buf = torch.empty_like(table, memory_format=torch.contiguous_format)
    if len(pool) < _POOL:
        pool.append(buf)
    return buf


def _out_buffer(table: Tensor, reuse: bool) -> Tensor:
    """The buffer the kernel writes the table gradient into (empty: the kernel allocates)."""
    return grad_buffer(table) if reuse else _empty(table)


def _engine_wants(t: Tensor) -> bool:
    """Whether the running backward pass will use a gradient for ``t`` (``True`` when unsure)."""
    if _get_grad_fn_or_grad_acc is None:  # pragma: no cover
        return True
    try:
        return bool(torch._C._will_engine_execute_node(_get_grad_fn_or_grad_acc(t)))
    except (AttributeError, RuntimeError, TypeError):  # private API; computing it is always correct
        return True


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, x, mod, spec):
        ctx.save_for_backward(table, x)
        ctx.mod, ctx.spec, ctx.table = mod, spec, table
        return mod.forward(table, x, spec.meta_i, spec.meta_f, spec.mode)

    @staticmethod
    def backward(ctx, gout):
        table, x = ctx.saved_tensors
        need_table, need_x = ctx.needs_input_grad[:2]
        if need_table and need_x:  # e.g. grad(out, x, create_graph=True): skip the unused table scatter
            need_table = _engine_wants(table)
        if not (need_table or need_x):
            return None, None, None, None
        reuse = not torch.is_grad_enabled()  # create_graph: a fresh tensor (it joins a graph)
        gt, gx = _EncodeBackward.apply(gout.contiguous(), table, x, ctx.mod, ctx.spec, need_table, need_x,
                                       ctx.table, reuse)
        return (gt if need_table else None), (gx if need_x else None), None, None


class _EncodeBackward(torch.autograd.Function):
    """``(grad_out, table, x) -> (grad_table, grad_x)``; unneeded outputs are empty tensors.
    ``key``: the table object (the parameter) whose cached gradient buffers may receive a table gradient,
    here when ``reuse`` (no graph is being built) and in the double backward when it builds no graph."""

    @staticmethod
    def forward(ctx, gout, table, x, mod, spec, need_table, need_x, key, reuse):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(gout, table, x)
        ctx.mod, ctx.spec, ctx.key = mod, spec, key
        gt, gx = mod.backward(gout, table, x, spec.meta_i, spec.meta_f, spec.mode, need_table, need_x,
                              spec.strategy, _out_buffer(key, reuse and need_table))
        return gt.detach(), gx  # detach: a new tensor object on the buffer, so grad accumulation can steal it

    @staticmethod
    @once_differentiable
    def backward(ctx, ggt, ggx):
        gout, table, x = ctx.saved_tensors
        need_gout, need_table, need_x = ctx.needs_input_grad[:3]
        has_t = ggt is not None and ggt.numel() > 0
        has_x = ggx is not None and ggx.numel() > 0
        none = (None,) * 6
        if not (has_t or has_x) or not (need_gout or need_table or need_x):
            return (None, None, None) + none
        ggt = ggt.contiguous() if has_t else _empty(table)
        ggx = ggx.contiguous() if has_x else _empty(x)
        spec = ctx.spec
        want_table = need_table and has_x
        reuse = want_table and not torch.is_grad_enabled()
        g_gout, g_table, g_x = ctx.mod.double_backward(
            gout, table, x, ggt, ggx, spec.meta_i, spec.meta_f, spec.mode, need_gout, want_table,
            need_x, spec.strategy, _out_buffer(ctx.key, reuse))
        if reuse:
            g_table = g_table.detach()
        return ((g_gout if need_gout else None), (g_table if need_table and has_x else None),
                (g_x if need_x else None)) + none
