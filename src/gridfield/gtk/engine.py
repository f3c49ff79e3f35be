"""``gtk(model, x1, x2)``: the grid tangent kernel behind one switch of implementations.

* ``"reference"``: dense ``torch.func.jacrev`` Jacobians, ``G = J1 J2^T / m`` (small ``n``; tests).
* ``"structured"``: the sparse Jacobian built from ``grid.support(x)`` and the decoder's ``dD/df``
  (exact for any decoder), ``G = J1 J2^T / m`` as a sparse product (dense when ``wrt="all"``).
* ``"operator"``: matrix-free ``G v = J (J^T v) / m`` (:class:`~gridfield.gtk.operator.GTKOperator`).
* ``"auto"``: structured when the product fits the memory budget, else the operator.

The chosen implementation is recorded in the result (``.implementation``) and logged at INFO level
on the ``gridfield.gtk`` logger.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor, nn

from gridfield.errors import InputError
from gridfield.fast.gram import sparse_gram
from gridfield.fields import Field, IdentityDecoder
from gridfield.grids.base import Grid
from gridfield.gtk._checks import check_budget, check_choice, check_points, default_budget
from gridfield.gtk._result import GTK
from gridfield.gtk.fn import Implementation, gtk_fn
from gridfield.gtk.jacobian import grid_jacobian, kernel_nnz_bound, n_grid_params, other_jacobian, other_trainable
from gridfield.gtk.operator import GTKOperator
from gridfield.gtk.precond import lattice_preconditioner
from gridfield.gtk.reference import reference_jacobian, reference_kernel

log = logging.getLogger("gridfield.gtk")
IMPLEMENTATIONS = ("auto", "reference", "structured", "operator")
WRT = ("grid", "all")


def _as_field(model: nn.Module) -> nn.Module:
    """A ``Field``; a bare grid gets the identity decoder (its features are the outputs)."""
    if hasattr(model, "grid") and hasattr(model, "decoder"):
        return model
    if hasattr(model, "support") and hasattr(model, "grid_parameters"):
        return Field(model, IdentityDecoder(model.out_dim, model.out_dim))
    raise InputError(f"gtk expects a Field (grid + decoder) or a Grid (or a module containing one), got "
                     f"{type(model).__name__}; for any other model use gridfield.gtk.gtk_fn")


def _is_gridless(model: nn.Module) -> bool:
    """A non-grid reference field (Fourier-feature MLP, MFN): no grid, no grid features."""
    return (getattr(model, "grid", None) is None and hasattr(model, "grid_parameters")
            and not model.grid_parameters())


def _gridless_ntk(model, x1, x2, wrt, implementation, dtype, max_bytes) -> GTK:
    """The ordinary empirical NTK (all trainable parameters) of a field without a grid (reference path)."""
    name = type(model).__name__
    if wrt != "all":
        raise InputError(f"{name} has no grid features, so its GTK wrt the grid is empty; "
                         "use wrt='all' (its empirical NTK over all parameters)")
    if implementation not in ("auto", "reference"):
        raise InputError(f"{name} has no grid support for the {implementation!r} implementation; "
                         "use implementation='reference' (dense torch.func Jacobians)")
    check_points(x1, model.in_dim, "x1")
    if x2 is not None:
        check_points(x2, model.in_dim, "x2")
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    t0 = time.perf_counter()
    j1 = reference_jacobian(model, x1, names, dtype, max_bytes)
    j2 = j1 if x2 is None else reference_jacobian(model, x2, names, dtype, max_bytes)
    n_par = sum(model.get_parameter(k).numel() for k in names)
    result = GTK(reference_kernel(j1, j2, model.out_dim), "reference", wrt, model.out_dim, n_par, 0.0)
    result.seconds = time.perf_counter() - t0
    return result


def _field_like(model: nn.Module) -> bool:
    """A Field (grid + decoder), a bare Grid, or a non-grid reference field: the paths of this module."""
    return ((hasattr(model, "grid") and hasattr(model, "decoder"))
            or (hasattr(model, "support") and hasattr(model, "grid_parameters")) or _is_gridless(model))


def _contains_grid(model: nn.Module) -> bool:
    return any(isinstance(m, Grid) for m in model.modules())


def _any_module(model, x1, x2, wrt, implementation, dtype, max_bytes) -> GTK:
    """Any other module containing a Grid (a user's module; a radiance field has no forward, see
    :func:`gtk_fn`) through :func:`gtk_fn`, its grids found by type. ``reference`` runs
    ``JACOBIAN_CONTRACTION``, ``operator`` :meth:`KernelFn.operator`."""
    impl = {"auto": Implementation.AUTO, "structured": Implementation.STRUCTURED,
            "reference": Implementation.JACOBIAN_CONTRACTION, "operator": Implementation.STRUCTURED}[implementation]
    kernel_fn = gtk_fn(model, wrt=wrt, implementation=impl, dtype=dtype, max_bytes=max_bytes)
    if implementation == "operator":
        if x2 is not None:
            raise InputError("the operator implementation is for square kernels G(x, x); "
                             "use implementation='structured' for a cross kernel G(x1, x2)")
        return kernel_fn.operator(x1)
    return kernel_fn(x1, x2)


def _grid_names(field: nn.Module) -> list[str]:
    return list(field.grid_parameters())


def gtk(model: nn.Module, x1: Tensor, x2: Tensor | None = None, wrt: str = "grid",
        implementation: str = "auto", dtype: torch.dtype = torch.float64,
        max_bytes: int | None = None) -> GTK:
    """The channel-averaged grid tangent kernel ``G_ij = (1/m) sum_o <dg_o(x1_i)/dw, dg_o(x2_j)/dw>``.

    model: a ``Field`` (or a bare ``Grid``: identity decoder; any other module goes through
    :func:`~gridfield.gtk.gtk_fn`, its grids found by type). x1 ``[n1, d]``, x2 ``[n2, d]`` (default
    ``x1``) in ``[-1, 1]^d``. wrt: ``"grid"`` (the paper's GTK: grid features only) or ``"all"``
    (grid + trainable decoder/kernel parameters: the empirical NTK). dtype: of the assembled kernel.
    max_bytes: memory budget (default half the available memory), checked before allocating.
    Returns a :class:`GTK` (not differentiable). Example: ``gtk(field, x).dense()``.
    """
    check_choice("wrt", wrt, WRT)
    check_choice("implementation", implementation, IMPLEMENTATIONS)
    if isinstance(model, nn.Module) and not _field_like(model) and _contains_grid(model):
        return _any_module(model, x1, x2, wrt, implementation, dtype, max_bytes)
    if _is_gridless(model):
        return _gridless_ntk(model, x1, x2, wrt, implementation, dtype, max_bytes)
    field = _as_field(model)
    dim = field.grid.in_dim
    check_points(x1, dim, "x1")
    if x2 is not None:
        check_points(x2, dim, "x2")
    if x2 is not None and implementation == "operator":
        raise InputError("the operator implementation is for square kernels G(x, x); "
                         "use implementation='structured' for a cross kernel G(x1, x2)")
    table = next(iter(field.grid.grid_parameters().values()))
    x1 = x1.to(table.dtype)
    x2 = x1 if x2 is None else x2.to(table.dtype)
    others = list(other_trainable(field)) if wrt == "all" else []
    n_par = n_grid_params(field.grid) + sum(field.get_parameter(k).numel() for k in others)
    m, t0 = field.out_dim, time.perf_counter()
    if implementation == "reference":
        names = _grid_names(field) + others
        j1 = reference_jacobian(field, x1, names, dtype, max_bytes)
        j2 = j1 if x2 is x1 else reference_jacobian(field, x2, names, dtype, max_bytes)
        result = GTK(reference_kernel(j1, j2, m), "reference", wrt, m, n_par, 0.0)
    else:
        result = _sparse_paths(field, x1, x2, others, implementation, dtype, max_bytes, n_par)
    result.seconds = time.perf_counter() - t0
    log.info("gtk: implementation=%s wrt=%s shape=%s in %.3fs", result.implementation, wrt, result.shape,
             result.seconds)
    return result


def _sparse_paths(field, x1, x2, others, implementation, dtype, max_bytes, n_par) -> GTK:
    """Structured (sparse product) or operator GTK from the support-built Jacobians."""
    m, wrt = field.out_dim, "all" if others else "grid"
    j1 = grid_jacobian(field, x1, dtype, max_bytes)
    j2 = j1 if x2 is x1 else grid_jacobian(field, x2, dtype, max_bytes)
    q = sum(field.get_parameter(k).numel() for k in others)
    check_budget(f"the dense Jacobian of the {q} decoder/kernel parameters", 16.0 * (x1.shape[0] + x2.shape[0]) * m * q,
                 max_bytes, "use wrt='grid' (the paper's GTK) or fewer points")
    d1 = other_jacobian(field, x1, others, dtype) if others else None
    d2 = d1 if (x2 is x1 or d1 is None) else other_jacobian(field, x2, others, dtype)
    factor = "stacked outputs [n, m*P]" if j1.shape[1] == m * n_grid_params(field.grid) else "row-level [n, rows]"
    info = {"nnz_jacobian": int(j1.nnz), "jacobian_factor": factor}
    if implementation != "operator":  # the product's size decides (and is checked) only when it is formed
        nnz = info["nnz_kernel_bound"] = kernel_nnz_bound(j1, j2)
        need = 16.0 * nnz + (8.0 * j1.shape[0] * j2.shape[0] if others else 0.0)
    if implementation == "auto":
        budget = default_budget() if max_bytes is None else max_bytes
        implementation = "structured" if (need <= budget or x2 is not x1) else "operator"
    if implementation == "operator":
        precond = lattice_preconditioner(field, x1, j1, m) if d1 is None else None
        info["preconditioner"] = "separable lattice (Jacobi in a Kronecker eigenbasis)" if precond else "none"
        return GTK(GTKOperator(j1, m, d1), "operator", wrt, m, n_par, 0.0, info, precond)
    check_budget(f"the structured GTK ({j1.shape[0]} x {j2.shape[0]}, up to {nnz} non-zeros)", need, max_bytes,
                 "use implementation='operator' (matrix-free) for a square kernel, or fewer points")
    g = sparse_gram(j1, j2)  # C++ row-by-row product (SciPy's where it does not apply)
    g.data /= m
    if d1 is not None:
        g = g.toarray() + d1 @ d2.T / m
    return GTK(g, "structured", wrt, m, n_par, 0.0, info)
