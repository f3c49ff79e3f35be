"""The Jacobians behind :func:`gridfield.gtk.gtk_fn`.

* :func:`dense_jacobian`: per-point ``torch.func.vmap(jacrev)`` Jacobians ``[n, m, Q]`` (batched
  ``jacrev`` over a chunk when the model's code does not vmap, e.g. data-dependent control flow).
* :func:`ntk_vector_products`: the kernel from ``vjp`` / ``jvp`` pairs, never storing a Jacobian.
* :func:`structured_jacobian`: the sparse grid part ``[n, m P_grid]`` (CSR) from each called grid's
  support and ``dy/dh``, the Jacobian of the outputs wrt that grid's output features (chain rule), plus
  the dense Jacobian of the other selected parameters; checked against autograd on a few points.

Column layout (as in :mod:`gridfield.gtk.jacobian`): outputs stacked, column ``o * P + p`` is output
``o`` and flat parameter ``p`` (the selected parameters in ``params`` order, each flattened row-major).
Nothing here is differentiable.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from torch.func import jacrev, jvp, vjp, vmap

from gridfield.errors import InputError
from gridfield.gtk._fn_model import GridCalls, GridInfo, Model
from gridfield.gtk.jacobian import _term_blocks
from gridfield.memory import available_bytes, format_bytes

GIB = 1024**3


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------
def budget(max_bytes: int | None, device=None) -> tuple[int, str]:
    """``(bytes, where from)``: ``max_bytes``, or half of what ``device`` has available now (at least
    1 GiB unless less is available)."""
    if max_bytes is not None:
        return int(max_bytes), "max_bytes"
    avail = available_bytes(device)
    return max(min(GIB, avail), avail // 2), f"half of the {format_bytes(avail)} available"


def refuse_over(need: float, what: str, request: str, fix: str, max_bytes: int | None, device=None) -> None:
    """Raise :class:`InputError` (``gridfield.memory.guard`` style) when ``need`` bytes exceed the budget:
    ``"<request> would need <n> (<bytes> bytes) for <what>; the budget is <m> (<from>); <fix>"``."""
    limit, source = budget(max_bytes, device)
    if need > limit:
        raise InputError(f"{request} would need {format_bytes(need)} ({int(need):,} bytes) for {what}; "
                         f"the budget is {format_bytes(limit)} ({source}); {fix}")


class NotStructured(InputError):
    """The structured path does not apply to this model (said why); the torch.func paths do."""


# ----------------------------------------------------------------------------------------------
# torch.func: Jacobian contraction
# ----------------------------------------------------------------------------------------------
def _split(params: Mapping[str, Tensor], names: list[str]) -> tuple[dict, dict]:
    return {k: v for k, v in params.items() if k not in names}, {k: params[k] for k in names}


def dense_jacobian(model: Model, params: Mapping[str, Tensor], names: list[str], x: Tensor, m: int,
                   dtype: torch.dtype, chunk: int, info: dict) -> Tensor:
    """``dy_o(x_i)/dtheta_q`` for the parameters ``names``: ``[n, m, Q]`` in ``dtype``.

    Per point with ``vmap(jacrev)`` (the torch.func NTK recipe); when the model does not vmap, a
    batched ``jacrev`` of each chunk's outputs (``(c m)`` backward passes over ``c`` points).
    ``info["jacobian"]`` says which ran.
    """
    fixed, var = _split(params, names)

    def one(v: dict, xi: Tensor) -> Tensor:
        return model.call({**fixed, **v}, xi.unsqueeze(0)).reshape(-1)

    def batch(v: dict, xs: Tensor) -> Tensor:
        return model.call({**fixed, **v}, xs).reshape(xs.shape[0], -1)

    blocks = []
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        jac = None
        if info.get("jacobian") != "batched jacrev":
            try:
                jac = vmap(jacrev(one), in_dims=(None, 0))(var, xs)
                info["jacobian"] = "vmap(jacrev) per point"
            except RuntimeError:  # data-dependent control flow, .item(), ...: batched jacrev
                info["jacobian"] = "batched jacrev"
        if jac is None:
            small = max(1, min(xs.shape[0], 64))
            parts = [jacrev(batch)(var, xs[t : t + small]) for t in range(0, xs.shape[0], small)]
            jac = {k: torch.cat([p[k] for p in parts]) for k in names}
        blocks.append(torch.cat([jac[k].detach().reshape(xs.shape[0], m, -1) for k in names], 2).to(dtype))
    return torch.cat(blocks)


def contract(j1: Tensor, j2: Tensor, channels: str) -> Tensor:
    """The kernel of two dense Jacobians ``[n1, m, Q]``, ``[n2, m, Q]`` (see :func:`gtk_fn`'s channels)."""
    if channels == "trace":
        return torch.einsum("imq,jmq->ij", j1, j2) / j1.shape[1]
    if channels == "diagonal":
        return torch.einsum("imq,jmq->ijm", j1, j2)
    return torch.einsum("imq,jnq->ijmn", j1, j2)


# ----------------------------------------------------------------------------------------------
# torch.func: NTK-vector products
# ----------------------------------------------------------------------------------------------
def ntk_vector_products(model: Model, params: Mapping[str, Tensor], names: list[str], x1: Tensor,
                        x2: Tensor, m: int, channels: str, dtype: torch.dtype, vectors: int,
                        chunk: int, info: dict) -> Tensor:
    """The kernel from ``G e = J2 (J1^T e)`` for every basis vector ``e`` of the outputs at ``x1``.

    For each chunk of ``x1``: one ``vjp`` (``J1^T e``) and one ``jvp`` of ``f(., x2)`` (``J2 u``) per
    basis vector, ``vectors`` at a time under ``vmap`` (a Python loop when the model does not vmap).
    Where the model's code has no forward-mode derivative (``F.grid_sample``), ``J2 u`` is the ``vjp``
    of the linear map ``w -> J2^T w`` instead (reverse mode twice; ``info["vector_products"]`` says
    which). Memory ``O(vectors (P + n2 m))``: no Jacobian is stored.
    """
    fixed, var = _split(params, names)
    n1, n2 = x1.shape[0], x2.shape[0]
    shape = {"trace": (n1, n2), "diagonal": (n1, n2, m), "full": (n1, n2, m, m)}[channels]
    out = torch.zeros(shape, dtype=dtype, device=x1.device)
    out_dtype = next(iter(params.values())).dtype

    def f2(v: dict) -> Tensor:
        return model.call({**fixed, **v}, x2).reshape(n2, m)

    transposed = []  # the linear map u -> J2 u by reverse mode twice, built once when needed

    def j2_times(u: dict) -> Tensor:
        if info.get("vector_products", "").startswith("jvp"):
            return jvp(f2, (var,), (u,))[1]
        if not transposed:
            _, vjp2 = vjp(f2, var)
            zero = torch.zeros(n2, m, dtype=out_dtype, device=x1.device)
            transposed.append(vjp(lambda w: vjp2(w)[0], zero)[1])
        return transposed[0](u)[0]

    mode = {"vmap": True}
    info["vector_products"] = "jvp"
    for s in range(0, n1, chunk):
        xs = x1[s : s + chunk]
        c = xs.shape[0]
        _, vjp_fn = vjp(lambda v, xs=xs, c=c: model.call({**fixed, **v}, xs).reshape(c, m), var)

        def column(e: Tensor, vjp_fn=vjp_fn) -> Tensor:  # e [c, m] -> J2 J1^T e [n2, m]
            return j2_times(vjp_fn(e)[0])

        for r0 in range(0, c * m, vectors):
            rows = torch.arange(r0, min(r0 + vectors, c * m), device=x1.device)
            e = torch.zeros(rows.numel(), c * m, dtype=out_dtype, device=x1.device)
            e[torch.arange(rows.numel()), rows] = 1
            e = e.view(-1, c, m)
            res = None
            while res is None:
                try:
                    res = vmap(column)(e) if mode["vmap"] else torch.stack([column(ei) for ei in e])
                except NotImplementedError:  # no forward-mode derivative: reverse mode twice
                    if not info["vector_products"].startswith("jvp"):
                        raise
                    info["vector_products"] = "vjp of vjp"
                except RuntimeError:  # the model does not vmap: one vector at a time
                    if not mode["vmap"]:
                        raise
                    mode["vmap"] = False
            res = res.detach().to(dtype)  # [b, n2, m]: row (i, o) of the full kernel
            pts, outs = rows // m + s, rows % m
            if channels == "trace":
                out.index_add_(0, pts, res[torch.arange(rows.numel()), :, outs] / m)
            elif channels == "diagonal":
                out[pts, :, outs] = res[torch.arange(rows.numel()), :, outs]
            else:
                out[pts, :, outs, :] = res
    info["vector_products"] += ", vmap" if mode["vmap"] else ", loop"
    return out


# ----------------------------------------------------------------------------------------------
# Structured: sparse grid Jacobian by the chain rule
# ----------------------------------------------------------------------------------------------
def grid_columns(params: Mapping[str, Tensor], grid_names: list[str]) -> tuple[dict[str, int], int]:
    """First flat column of each selected grid table, and their total size ``P_grid``."""
    offsets, off = {}, 0
    for k in grid_names:
        offsets[k], off = off, off + params[k].numel()
    return offsets, off


def _selected_calls(calls: list[dict], grid_names: list[str]) -> list[dict]:
    return [c for c in calls if any(k in grid_names for k in c["tables"].values())]


def support_width(model: Model, params: Mapping[str, Tensor], grids: list[GridInfo], grid_names: list[str],
                  x: Tensor, m: int) -> int:
    """Non-zeros per point of the stacked grid Jacobian (from the support at one point): ``sum K F m``."""
    with torch.no_grad(), GridCalls(grids, params, with_delta=False, with_support=True) as rec:
        model.call(params, x[:1])
    width = 0
    for c in _selected_calls(rec.calls, grid_names):
        for t in c["terms"]:
            if c["tables"].get(t.param) in grid_names:
                width += t.index.shape[1] * (t.channels.stop - t.channels.start) * m
    return width


def _chunk_jacobian(model: Model, params: Mapping[str, Tensor], grids: list[GridInfo], grid_names: list[str],
                    offsets: dict[str, int], p_grid: int, x: Tensor, m: int, dtype: torch.dtype) -> sp.csr_matrix:
    """CSR rows ``[c, m P_grid]`` of the grid part for the points ``x``."""
    c = x.shape[0]
    with torch.enable_grad(), GridCalls(grids, params, with_delta=True, with_support=True) as rec:
        y = model.call(params, x).reshape(c, -1)
        calls = _selected_calls(rec.calls, grid_names)
        for call in calls:
            if call["rows"] != c:
                name = next(iter(call["tables"].values()))
                raise NotStructured(
                    f"the grid of {name!r} was called on {call['rows']} rows for {c} points; the structured "
                    "path needs one grid row per point (row i of the output depending on point i only); "
                    "use Implementation.JACOBIAN_CONTRACTION or NTK_VECTOR_PRODUCTS")
        deltas = [call["delta"] for call in calls]
        grads = [[None] * len(calls) for _ in range(m)]
        if y.requires_grad and calls:
            for o in range(m):  # sum over points of y[:, o]: row i of the gradient is dy_o(x_i)/dh(x_i)
                grads[o] = list(torch.autograd.grad(y[:, o].sum(), deltas, retain_graph=o < m - 1,
                                                    allow_unused=True))
    vals, cols = [], []
    with torch.no_grad():
        for ci, call in enumerate(calls):
            zero = torch.zeros(c, call["width"], dtype=dtype, device=x.device)
            a = torch.stack([zero if grads[o][ci] is None else grads[o][ci].to(dtype) for o in range(m)], 1)
            for t in call["terms"]:
                key = call["tables"].get(t.param)
                if key not in offsets:
                    continue
                v, col = _term_blocks(t, a, offsets[key], p_grid, call["feat"][t.param])
                vals.append(v)
                cols.append(col)
    if not vals:
        return sp.csr_matrix((c, m * p_grid), dtype=np.dtype(str(dtype).split(".")[-1]))
    v, col = torch.cat(vals, 1).cpu(), torch.cat(cols, 1).cpu()
    width = v.shape[1]
    index_dtype = torch.int32 if m * p_grid < 2**31 - 1 else torch.int64
    indptr = np.arange(0, c * width + 1, width, dtype=np.int64 if c * width >= 2**31 else np.int32)
    jac = sp.csr_matrix((v.reshape(-1).numpy(), col.to(index_dtype).reshape(-1).numpy(), indptr),
                        shape=(c, m * p_grid))
    jac.sum_duplicates()  # hash collisions, shared rows, several calls of one grid
    return jac


def structured_jacobian(model: Model, params: Mapping[str, Tensor], grids: list[GridInfo], names: list[str],
                        grid_names: list[str], x: Tensor, m: int, dtype: torch.dtype, chunk: int,
                        info: dict) -> tuple[sp.csr_matrix, Tensor | None]:
    """``(J_grid [n, m P_grid] CSR, D [n, m, Q] or None)``: the sparse grid part and the dense Jacobian of
    the other selected parameters (:func:`dense_jacobian`)."""
    offsets, p_grid = grid_columns(params, grid_names)
    if grid_names:
        parts = [_chunk_jacobian(model, params, grids, grid_names, offsets, p_grid, x[s : s + chunk], m, dtype)
                 for s in range(0, x.shape[0], chunk)]
        jg = parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")
    else:  # no grid table selected: the dense part alone
        jg = sp.csr_matrix((x.shape[0], 0), dtype=np.dtype(str(dtype).split(".")[-1]))
    others = [k for k in names if k not in grid_names]
    d = dense_jacobian(model, params, others, x, m, dtype, chunk, info) if others else None
    return jg, d


def verify(model: Model, params: Mapping[str, Tensor], names: list[str], grid_names: list[str],
           x: Tensor, jg: sp.csr_matrix, d: Tensor | None, m: int, seed: int = 0) -> None:
    """Check ``J^T u`` of the structured Jacobian against autograd for a random ``u`` on the points ``x``
    (a few): catches a grid table that also enters the output outside its grid's forward, or outputs
    that depend on other points. Raises :class:`NotStructured` naming the parameter."""
    p = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(p, m, generator=gen, dtype=torch.float64)
    req = {k: (v.clone().requires_grad_(True) if k in names else v) for k, v in params.items()}
    with torch.enable_grad():
        y = model.call(req, x).reshape(p, m)
        true = torch.autograd.grad((y * u.to(device=y.device, dtype=y.dtype)).sum(), [req[k] for k in names],
                                   allow_unused=True)
    offsets, p_grid = grid_columns(params, grid_names)
    un = u.numpy()
    grid_t = sum(jg[:, o * p_grid : (o + 1) * p_grid].T @ un[:, o] for o in range(m)) if p_grid else None
    other_t = (torch.einsum("pmq,pm->q", d, u.to(device=d.device, dtype=d.dtype)).cpu().numpy()
               if d is not None else None)
    tol = 10 * torch.finfo(next(iter(params.values())).dtype).eps ** 0.5  # rounding passes, structure does not
    q = 0
    for k, t in zip(names, true):
        t = np.zeros(params[k].numel()) if t is None else t.detach().double().reshape(-1).cpu().numpy()
        if k in offsets:
            s = np.asarray(grid_t[offsets[k] : offsets[k] + params[k].numel()]).reshape(-1)
        else:
            s = other_t[q : q + params[k].numel()]
            q += params[k].numel()
        scale = max(np.abs(t).max(initial=0.0), np.abs(s).max(initial=0.0), 1e-300)
        err = np.abs(s - t).max(initial=0.0) / scale
        if err > tol and scale > 1e-200:
            raise NotStructured(
                f"the structured Jacobian of {k!r} differs from autograd (relative error {err:.2g} on "
                f"{p} points): the parameter enters the output outside its grid's forward, or an output "
                "depends on other points; use Implementation.JACOBIAN_CONTRACTION")


def n_params(params: Mapping[str, Tensor], names: list[str]) -> int:
    return int(sum(params[k].numel() for k in names))


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def kernel_entries(n1: int, n2: int, m: int, channels: str) -> int:
    return n1 * n2 * {"trace": 1, "diagonal": m, "full": m * m}[channels]

