"""``gtk_fn(f, params)``: the empirical tangent kernel of any PyTorch model, in the style of
neural-tangents' ``empirical_ntk_fn``.

``kernel_fn = gtk_fn(f, params, wrt=..., implementation=..., channels=...)`` returns a function with
``kernel_fn(x1, x2=None, params=None)`` -> :class:`~gridfield.gtk.GTK`, the kernel
``G(x1, x2) = J(x1) J(x2)^T`` with ``J = d f(params, x) / d params[wrt]``.

* ``f``: an ``nn.Module`` (``params`` default to its named parameters, read at every call), a bound
  method of one (``field.density``), or a function ``f(params, x)`` of a dict of named tensors (e.g.
  ``lambda p, x: torch.func.functional_call(model, p, (x,))``). ``f`` must map points independently:
  row ``i`` of ``f(params, x)`` (``[n]`` or ``[n, ...]``, trailing axes flattened into ``m`` output
  channels) depends on ``x[i]`` only, as in torch.func's NTK recipe.
* ``channels``: ``"trace"`` (default) ``[n1, n2]``, the kernel averaged over the ``m`` output
  channels, ``(1/m) sum_o J_o(x1) J_o(x2)^T`` (neural-tangents' ``trace_axes=(-1,)``, which also
  divides by ``m``; the same convention as :func:`gridfield.gtk.gtk`); ``"diagonal"`` ``[n1, n2, m]``,
  one kernel per output channel (``diagonal_axes=(-1,)``); ``"full"`` ``[n1, n2, m, m]``, every pair
  of channels (``trace_axes=()``).
* The ``STRUCTURED`` path finds every :class:`~gridfield.grids.base.Grid` the model contains by type,
  whatever its attribute name (a radiance field's density and colour grids, a user's module holding a
  grid as ``self.my_encoder``). The Jacobian wrt a grid's tables is ``dy/dh`` (the outputs wrt that
  grid's output features, any decoder, computed exactly by autograd) times the sparse ``dh/dw`` from
  ``grid.support(u)`` at the grid's own inputs ``u``; the other selected parameters (decoders, learned
  kernels) get dense torch.func Jacobians. The result is checked against autograd on a few points.

Every large allocation is estimated first and refused (``InputError``, with the bytes) over the
budget: ``max_bytes``, default half of the memory available now.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from enum import Enum

import numpy as np
import torch
from torch import Tensor

from gridfield.errors import InputError
from gridfield.fast.gram import sparse_gram
from gridfield.gtk._fn_jac import (
    NotStructured,
    budget,
    contract,
    dense_jacobian,
    grid_columns,
    itemsize,
    kernel_entries,
    n_params,
    ntk_vector_products,
    refuse_over,
    structured_jacobian,
    support_width,
    verify,
)
from gridfield.gtk._fn_model import Model, discover, resolve_wrt
from gridfield.gtk._result import GTK
from gridfield.gtk.jacobian import BYTES_PER_NNZ, kernel_nnz_bound
from gridfield.gtk.operator import GTKOperator

log = logging.getLogger("gridfield.gtk")
CHANNELS = ("trace", "diagonal", "full")


class Implementation(str, Enum):
    """How :func:`gtk_fn` computes the kernel (each member's docstring says when to use it)."""

    def __new__(cls, value: str, doc: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.__doc__ = doc
        return member

    JACOBIAN_CONTRACTION = ("jacobian_contraction",
                            "Small models (MLPs, P up to ~1e5) when the n m P Jacobian fits: per-point "
                            "vmap(jacrev) Jacobians contracted with einsum; the fastest torch.func path.")
    NTK_VECTOR_PRODUCTS = ("ntk_vector_products",
                           "Many parameters and few points: one vjp and one jvp per output of x1, no "
                           "Jacobian stored (memory O(P + n2 m) per vector, time O(n1 m (n1 + n2))).")
    STRUCTURED = ("structured",
                  "Models containing grids: the sparse grid Jacobian from each Grid's support times the "
                  "exact dy/dh of whatever follows it, torch.func for the other parameters; O(nnz).")
    AUTO = ("auto",
            "The default: STRUCTURED when wrt selects a grid table of a Grid the model calls, else "
            "JACOBIAN_CONTRACTION when its Jacobians fit the budget, else NTK_VECTOR_PRODUCTS.")

    @classmethod
    def parse(cls, value) -> Implementation:
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise InputError(f"implementation must be one of {[m.name for m in cls]} (or their values "
                             f"{[m.value for m in cls]}), got {value!r}") from None


class KernelFn:
    """``kernel_fn(x1, x2=None, params=None) -> GTK``; see :func:`gtk_fn`."""

    def __init__(self, f, params, wrt, implementation, channels, dtype, max_bytes, chunk, check) -> None:
        if channels not in CHANNELS:
            raise InputError(f"channels must be one of {list(CHANNELS)}, got {channels!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise InputError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if not isinstance(chunk, int) or chunk < 1:
            raise InputError(f"chunk must be a positive int, got {chunk!r}")
        self.model = Model(f, params)
        self.wrt, self.channels, self.dtype = wrt, channels, dtype
        self.implementation = Implementation.parse(implementation)
        self.max_bytes, self.chunk, self.check = max_bytes, chunk, check

    def __repr__(self) -> str:
        return (f"KernelFn({self.model.label}, wrt={self.wrt!r}, implementation={self.implementation.name}, "
                f"channels={self.channels!r})")

    # -- the call -----------------------------------------------------------------------------
    def __call__(self, x1: Tensor, x2: Tensor | None = None, params: Mapping[str, Tensor] | None = None) -> GTK:
        """The kernel between the points ``x1`` ``[n1, ...]`` and ``x2`` (default ``x1``)."""
        t0 = time.perf_counter()
        s = self._setup(x1, x2, params)
        impl, info = self.implementation, s["info"]
        if impl is Implementation.STRUCTURED or (impl is Implementation.AUTO and s["grid_names"]):
            try:
                matrix = self._structured(s)
                impl = Implementation.STRUCTURED
            except NotStructured as err:
                if impl is Implementation.STRUCTURED:
                    raise
                info["fallback"] = str(err)
                log.warning("gtk_fn: structured path does not apply (%s); using torch.func", err)
                impl, matrix = self._torch_func(s, Implementation.AUTO)
        else:
            impl, matrix = self._torch_func(s, impl)
        info |= {"channels": self.channels, "grids": s["grids_found"], "wrt_names": s["names"]}
        result = GTK(matrix, impl.value, _wrt_label(self.wrt), s["m"], n_params(s["params"], s["names"]),
                     time.perf_counter() - t0, info)
        log.info("gtk_fn: implementation=%s wrt=%s shape=%s in %.3fs", impl.value, result.wrt, result.shape,
                 result.seconds)
        return result

    def operator(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> GTK:
        """The square kernel ``G(x, x)`` (channels traced) matrix-free, as a
        :class:`~gridfield.gtk.operator.GTKOperator` built from the structured Jacobians: memory
        ``O(nnz(J))`` at any ``n`` (for :func:`~gridfield.gtk.bound` with ``method="cg"``, Lanczos)."""
        t0 = time.perf_counter()
        s = self._setup(x, None, params)
        if not s["grid_names"]:
            raise InputError(f"the operator is built from the structured Jacobians; wrt={self.wrt!r} selects "
                             "no grid table")
        j1, d1 = self._structured_parts(s, s["x1"], verify_first=self.check)
        m = s["m"]
        dense = None if d1 is None else d1.reshape(d1.shape[0], -1).cpu().numpy()
        op = GTKOperator(j1, m, dense)
        info = s["info"] | {"channels": "trace", "grids": s["grids_found"], "wrt_names": s["names"],
                            "nnz_jacobian": int(j1.nnz)}
        return GTK(op, "operator", _wrt_label(self.wrt), m, n_params(s["params"], s["names"]),
                   time.perf_counter() - t0, info)

    # -- setup --------------------------------------------------------------------------------
    def _setup(self, x1, x2, params) -> dict:
        prm, trainable = self.model.params(params)
        ref = next(iter(prm.values()))
        x1 = _check_x(x1, "x1", ref)
        x2 = None if x2 is None else _check_x(x2, "x2", ref)
        grids = discover(self.model, prm, x1)
        grid_keys = {k for g in grids for k in g.tables.values()}
        names = resolve_wrt(self.wrt, prm, trainable, grid_keys)
        with torch.no_grad():
            y = self.model.call(prm, x1[:1])
        if not isinstance(y, Tensor) or y.ndim == 0 or y.shape[0] != 1:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise InputError(f"f(params, x) must return one row per point ([n] or [n, ...]); on 1 point "
                             f"it returned {shape}")
        return {"params": prm, "x1": x1, "x2": x2, "grids": grids, "names": names,
                "grid_names": [k for k in names if k in grid_keys],
                "grids_found": [g.name for g in grids], "m": int(y.numel()), "device": ref.device,
                "info": {}}

    def _request(self, s: dict, impl: Implementation) -> str:
        n1 = s["x1"].shape[0]
        n2 = n1 if s["x2"] is None else s["x2"].shape[0]
        m = s["m"]
        return (f"gtk_fn({impl.name}) on {n1} x {n2} points, {m} output{'s' if m != 1 else ''} and "
                f"{n_params(s['params'], s['names'])} parameters")

    # -- torch.func ---------------------------------------------------------------------------
    def _jc_bytes(self, s: dict) -> float:
        n = s["x1"].shape[0] + (0 if s["x2"] is None else s["x2"].shape[0])
        q, m = n_params(s["params"], s["names"]), s["m"]
        per = itemsize(next(iter(s["params"].values())).dtype)
        chunk = min(self.chunk, s["x1"].shape[0])
        jac = n * m * q * itemsize(self.dtype) + 3 * chunk * m * q * per  # stored + one chunk's temporaries
        return float(jac + self._kernel_bytes(s))

    def _kernel_bytes(self, s: dict) -> float:
        n1 = s["x1"].shape[0]
        n2 = n1 if s["x2"] is None else s["x2"].shape[0]
        return 2.0 * kernel_entries(n1, n2, s["m"], self.channels) * itemsize(self.dtype)

    def _torch_func(self, s: dict, impl: Implementation) -> tuple[Implementation, np.ndarray]:
        x1 = s["x1"]
        x2 = x1 if s["x2"] is None else s["x2"]
        m, prm, names = s["m"], s["params"], s["names"]
        limit, _ = budget(self.max_bytes, s["device"])
        if impl is Implementation.AUTO:
            impl = (Implementation.JACOBIAN_CONTRACTION if self._jc_bytes(s) <= limit
                    else Implementation.NTK_VECTOR_PRODUCTS)
        if impl is Implementation.JACOBIAN_CONTRACTION:
            refuse_over(self._jc_bytes(s), "the dense Jacobians J(x) [n, m, P] and the kernel",
                        self._request(s, impl),
                        "use Implementation.NTK_VECTOR_PRODUCTS (no stored Jacobian), STRUCTURED for a model "
                        "with grids, or fewer points (or pass a larger max_bytes)", self.max_bytes, s["device"])
            j1 = dense_jacobian(self.model, prm, names, x1, m, self.dtype, self.chunk, s["info"])
            j2 = j1 if s["x2"] is None else dense_jacobian(self.model, prm, names, x2, m, self.dtype,
                                                          self.chunk, s["info"])
            return impl, contract(j1, j2, self.channels).cpu().numpy()
        q = n_params(prm, names)
        per_vector = (4 * q + 4 * (min(self.chunk, x1.shape[0]) + x2.shape[0]) * m) * itemsize(self.dtype)
        kernel = self._kernel_bytes(s)
        refuse_over(per_vector + kernel, "one NTK-vector product (vjp + jvp) and the kernel",
                    self._request(s, impl), "use fewer points (or pass a larger max_bytes)", self.max_bytes,
                    s["device"])
        vectors = int(max(1, min(64, (limit - kernel) // per_vector)))
        g = ntk_vector_products(self.model, prm, names, x1, x2, m, self.channels, self.dtype, vectors,
                                self.chunk, s["info"])
        return impl, g.cpu().numpy()

    # -- structured ---------------------------------------------------------------------------
    def _structured_parts(self, s: dict, x: Tensor, verify_first: bool):
        prm, names, grid_names, m = s["params"], s["names"], s["grid_names"], s["m"]
        if not grid_names:
            s["info"]["note"] = ("wrt selects no table of a Grid the model calls: the structured kernel is "
                                 "its dense torch.func part alone")
        width = support_width(self.model, prm, s["grids"], grid_names, x, m) if grid_names else 0
        n = x.shape[0]
        others = [k for k in names if k not in grid_names]
        q = n_params(prm, others)
        need = (n * width * (itemsize(self.dtype) + 8) + min(n, self.chunk) * width * BYTES_PER_NNZ
                + n * m * q * itemsize(self.dtype) * 2)
        what = f"the sparse grid Jacobian ({n} points x {width} non-zeros)"
        fix = "use fewer points (or pass a larger max_bytes)"
        if q:
            what += f" and the dense Jacobian of {q} other parameters"
            fix = "use fewer points, or wrt='grid' to leave out the dense part (or pass a larger max_bytes)"
        refuse_over(need, what, self._request(s, Implementation.STRUCTURED), fix, self.max_bytes, s["device"])
        jg, d = structured_jacobian(self.model, prm, s["grids"], names, grid_names, x, m, self.dtype,
                                    self.chunk, s["info"])
        if verify_first:
            p = min(4, n)
            verify(self.model, prm, names, grid_names, x[:p], jg[:p], None if d is None else d[:p], m)
        s["info"]["nnz_jacobian"] = s["info"].get("nnz_jacobian", 0) + int(jg.nnz)
        return jg, d

    def _structured(self, s: dict):
        j1, d1 = self._structured_parts(s, s["x1"], verify_first=self.check)
        j2, d2 = (j1, d1) if s["x2"] is None else self._structured_parts(s, s["x2"], verify_first=False)
        m, n1, n2 = s["m"], j1.shape[0], j2.shape[0]
        _, p_grid = grid_columns(s["params"], s["grid_names"])
        request = self._request(s, Implementation.STRUCTURED)
        if self.channels == "trace" and d1 is None:
            nnz = kernel_nnz_bound(j1, j2)
            s["info"]["nnz_kernel_bound"] = nnz
            refuse_over(16.0 * nnz, f"the sparse kernel (up to {nnz} non-zeros)", request,
                        "use KernelFn.operator(x) (matrix-free) for a square kernel, or fewer points "
                        "(or pass a larger max_bytes)", self.max_bytes, s["device"])
            g = sparse_gram(j1, j2)
            g.data /= m
            return g
        refuse_over(self._kernel_bytes(s), f"the dense kernel ({self.channels})", request,
                    "use fewer points or channels='trace' (or pass a larger max_bytes)", self.max_bytes,
                    s["device"])

        def block(o: int, o2: int) -> np.ndarray:
            a = j1[:, o * p_grid : (o + 1) * p_grid]
            b = a if (j2 is j1 and o == o2) else j2[:, o2 * p_grid : (o2 + 1) * p_grid]
            return (a @ b.T).toarray()

        dpart = None if d1 is None else contract(d1, d2, self.channels).cpu().numpy()
        if self.channels == "trace":
            g = (j1 @ j2.T).toarray() / m
        elif self.channels == "diagonal":
            g = np.stack([block(o, o) for o in range(m)], -1)
        else:
            g = np.empty((n1, n2, m, m), dtype=np.float64)
            for o in range(m):
                for o2 in range(m):
                    g[:, :, o, o2] = block(o, o2)
        g = g.astype(np.dtype(str(self.dtype).split(".")[-1]), copy=False)
        return g if dpart is None else g + dpart


def gtk_fn(f, params: Mapping[str, Tensor] | None = None, *, wrt="all",
           implementation: Implementation | str = Implementation.AUTO, channels: str = "trace",
           dtype: torch.dtype = torch.float64, max_bytes: int | None = None, chunk: int = 1024,
           check: bool = True) -> KernelFn:
    """A function computing the empirical tangent kernel ``G(x1, x2) = J(x1) J(x2)^T`` of ``f``.

    f: an ``nn.Module``, a bound method of one, or ``f(params, x)`` (module doc). params: ``{name:
    tensor}``; for a module, entries override its parameters (default: all of them, read at each call).
    wrt: what ``J`` differentiates: ``"grid"`` (the tables of every Grid the model contains: the paper's
    GTK), ``"other"`` (every other trainable parameter), ``"all"`` (both: the empirical NTK, the
    default), parameter names or globs (``"decoder.*"``), or a list of these. implementation: an
    :class:`Implementation` (or its value). channels: ``"trace"`` ``[n1, n2]`` (mean over outputs),
    ``"diagonal"`` ``[n1, n2, m]``, ``"full"`` ``[n1, n2, m, m]``. dtype: of the kernel. max_bytes:
    memory budget (default half the available memory), checked before allocating. chunk: points per
    Jacobian block. check: compare the structured Jacobian with autograd on the first 4 points.

    Example::

        kernel_fn = gtk_fn(field, wrt="grid")
        G = kernel_fn(x)                 # GTK, G.matrix [n, n]; eigenspectrum(G), bound(G, y)
    """
    return KernelFn(f, params, wrt, implementation, channels, dtype, max_bytes, chunk, check)


def _check_x(x, name: str, ref: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of points [n, ...], got {type(x).__name__}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise InputError(f"{name} must hold at least one point (shape [n, ...]), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be floating point, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return x.detach().to(device=ref.device, dtype=ref.dtype)


def _wrt_label(wrt) -> str:
    return wrt if isinstance(wrt, str) else ",".join(map(str, wrt))

