"""``J (J^T v)`` for a sparse Jacobian in ELL layout (a fixed number of entries per row): the matrix-free
GTK's product (:mod:`gridfield.gtk.operator`), C++ on CPU (``csrc/gram.cpp``), plain PyTorch elsewhere.

ELL layout: ``cols`` int32 ``[n, K]`` and ``vals`` ``[n, K]``; row ``i`` of ``J`` ``[n, n_cols]`` is
``sum_k vals[i, k] e_{cols[i, k]}`` (padding entries carry ``vals == 0``; repeated columns add up).
Not differentiable (analysis only).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from gridfield.fast._build import want_fast

NAME = "gridfield_gram"
SOURCES = ("gram.cpp",)
WORKSPACE_BYTES = 2**28  #: cap on the per-thread table copies (more columns are done in blocks)


def ell_from_csr(jac: sp.csr_matrix) -> tuple[Tensor, Tensor]:
    """``(cols int32 [n, K], vals [n, K])`` of a CSR matrix, ``K`` its longest row; no copy when every row
    has ``K`` entries (shared memory with ``jac``), else shorter rows are padded with zeros."""
    n = jac.shape[0]
    widths = np.diff(jac.indptr)
    k = int(widths.max()) if n else 0
    indices = jac.indices.astype(np.int32, copy=False)
    if n and (widths == k).all():
        return torch.from_numpy(indices).view(n, k), torch.from_numpy(jac.data).view(n, k)
    cols = np.zeros((n, k), np.int32)
    vals = np.zeros((n, k), jac.data.dtype)
    row = np.repeat(np.arange(n), widths)
    pos = np.arange(jac.nnz) - np.repeat(jac.indptr[:-1], widths)
    cols[row, pos] = indices
    vals[row, pos] = jac.data
    return torch.from_numpy(cols), torch.from_numpy(vals)


def gram_matvec_reference(cols: Tensor, vals: Tensor, v: Tensor, n_cols: int) -> Tensor:
    """Plain PyTorch ``J (J^T v)``: ``v`` ``[n, c]`` -> ``[n, c]`` (one ``index_add_``, one gather)."""
    c = v.shape[1]
    u = torch.zeros(n_cols, c, dtype=v.dtype, device=v.device)
    u.index_add_(0, cols.reshape(-1).long(), (vals.unsqueeze(-1) * v.unsqueeze(1)).reshape(-1, c))
    return torch.einsum("nk,nkc->nc", vals, u[cols.long()])


class GramProduct:
    """``v [n, c] -> J (J^T v)`` for a fixed ELL ``J`` with ``n_cols`` columns, reusing one workspace.

    backend: ``"auto" | "fast" | "reference"`` (:mod:`gridfield.fast._build`); the C++ kernel runs for
    CPU float32/float64 tensors, with ``torch.get_num_threads()`` threads at construction.
    """

    def __init__(self, cols: Tensor, vals: Tensor, n_cols: int, backend: str = "auto") -> None:
        self.cols, self.vals, self.n_cols = cols.contiguous(), vals.contiguous(), int(n_cols)
        if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= self.n_cols):
            raise ValueError(f"ELL column indices must lie in [0, {self.n_cols}), got "
                             f"[{int(cols.min())}, {int(cols.max())}]")
        applies = cols.device.type == "cpu" and vals.dtype in (torch.float32, torch.float64)
        self.ext = want_fast(backend, NAME, SOURCES, applies, "CPU float32/float64 only")
        self.threads = max(1, torch.get_num_threads())
        self._ws: Tensor | None = None

    @property
    def fast(self) -> bool:
        """Whether the C++ kernel is used."""
        return self.ext is not None

    def __call__(self, v: Tensor) -> Tensor:
        v = v.to(self.vals.dtype).contiguous()
        if self.ext is None:
            return gram_matvec_reference(self.cols, self.vals, v, self.n_cols)
        block = max(1, WORKSPACE_BYTES // (self.threads * self.n_cols * v.element_size()))
        if v.shape[1] > block:  # many right-hand sides (e.g. densifying): bounded workspace, column blocks
            return torch.cat([self(v[:, i : i + block]) for i in range(0, v.shape[1], block)], 1)
        c = v.shape[1]
        if self._ws is None or self._ws.shape[2] != c:
            self._ws = torch.empty(self.threads, self.n_cols, c, dtype=v.dtype)
        return self.ext.gram_matvec(self.cols, self.vals, v, self._ws)


def sparse_gram(j1: sp.csr_matrix, j2: sp.csr_matrix, backend: str = "auto", sort: bool = False) -> sp.csr_matrix:
    """``J1 J2^T`` as a CSR matrix ``[n1, n2]`` (unique indices per row; sorted when ``sort``) of two float64 CSR
    matrices with the same columns: the C++ row-by-row product (threads over rows) where it applies, else
    SciPy's."""
    ok = j1.dtype == np.float64 and j2.dtype == np.float64 and j1.shape[1] == j2.shape[1] < 2**31
    ext = want_fast(backend, NAME, SOURCES, ok and j2.shape[0] < 2**31, "float64 CSR with int32-sized shapes")
    if ext is None:
        return (j1 @ j2.T).tocsr()
    t2 = j2.tocsc()
    args = [torch.from_numpy(np.ascontiguousarray(a, dtype=dt)) for a, dt in (
        (j1.indptr, np.int64), (j1.indices, np.int32), (j1.data, np.float64),
        (t2.indptr, np.int64), (t2.indices, np.int32), (t2.data, np.float64))]
    if j1.nnz and (int(j1.indices.min()) < 0 or int(j1.indices.max()) >= j1.shape[1]):
        raise ValueError("sparse_gram: column index out of range")
    indptr, indices, data = ext.gram_sparse(*args, j2.shape[0], sort)
    out = sp.csr_matrix((data.numpy(), indices.numpy(), indptr.numpy()), shape=(j1.shape[0], j2.shape[0]))
    out.has_sorted_indices = sort
    return out
