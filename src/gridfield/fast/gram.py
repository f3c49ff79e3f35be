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
