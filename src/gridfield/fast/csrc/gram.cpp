// Gram-matrix products of sparse Jacobians, for the GTK toolkit (gridfield/gtk):
//
// * gram_matvec: out = J (J^T v) for J stored with a fixed number of entries per row (ELL layout), the
//   matrix-free GTK's matvec (gridfield/gtk/operator.py);
// * gram_sparse: the sparse kernel K = J1 J2^T itself (CSR), the structured GTK (gridfield/gtk/engine.py).
//
// gram_matvec:
// J is [n, n_cols] with row i holding cols[i, k] / vals[i, k], k < K (padding entries have val 0;
// repeated columns within a row are allowed and add up). v is [n, c] (c right-hand sides, each a column).
// Step 1, u = J^T v [n_cols, c]: every thread scatters its block of rows into its own slice of the
// caller's workspace [threads, n_cols, c] (no atomics), then the slices are summed (parallel over
// columns). Step 2, out = J u: a gather, parallel over rows. Deterministic for a fixed thread count.
// Memory traffic per product: reading cols and vals twice (12 bytes per entry and pass in float64),
// plus the workspace; the random accesses into u stay within n_cols * c values.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

template <typename T, int C>
void gram_impl(const int32_t* cols, const T* vals, const T* v, T* out, T* ws, int64_t n, int64_t k_per_row,
               int64_t n_cols, int64_t c_dyn, int nt) {
  const int64_t c = C > 0 ? C : c_dyn;
  const int64_t slice = n_cols * c;
  // 1. per-thread scatter into ws[t] (thread t takes rows [t n / nt, (t + 1) n / nt))
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      T* u = ws + t * slice;
      std::memset(u, 0, sizeof(T) * slice);
      const int64_t b = n * t / nt, e = n * (t + 1) / nt;
      for (int64_t i = b; i < e; ++i) {
        const int32_t* ci = cols + i * k_per_row;
        const T* wi = vals + i * k_per_row;
        const T* vi = v + i * c;
        for (int64_t k = 0; k < k_per_row; ++k) {
          T* ur = u + static_cast<int64_t>(ci[k]) * c;
          const T w = wi[k];
          for (int64_t j = 0; j < c; ++j) ur[j] += w * vi[j];
        }
      }
    }
  });
  // 2. reduce the slices into ws[0]
  if (nt > 1) {
    at::parallel_for(0, slice, 1 << 14, [&](int64_t b, int64_t e) {
      for (int t = 1; t < nt; ++t) {
        const T* src = ws + t * slice;
        for (int64_t r = b; r < e; ++r) ws[r] += src[r];
      }
    });
  }
  // 3. gather out = J u
  const T* u = ws;
  at::parallel_for(0, n, 2048, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int32_t* ci = cols + i * k_per_row;
      const T* wi = vals + i * k_per_row;
      T acc[C > 0 ? C : 1] = {};
      if constexpr (C > 0) {
        for (int64_t k = 0; k < k_per_row; ++k) {
          const T* ur = u + static_cast<int64_t>(ci[k]) * C;
          for (int j = 0; j < C; ++j) acc[j] += wi[k] * ur[j];
        }
        for (int j = 0; j < C; ++j) out[i * C + j] = acc[j];
      } else {
        T* oi = out + i * c;
        for (int64_t j = 0; j < c; ++j) oi[j] = T(0);
        for (int64_t k = 0; k < k_per_row; ++k) {
          const T* ur = u + static_cast<int64_t>(ci[k]) * c;
          for (int64_t j = 0; j < c; ++j) oi[j] += wi[k] * ur[j];
        }
      }
    }
  });
}

}  // namespace

// out [n, c] = J (J^T v), cols in [0, n_cols); workspace: [threads, n_cols, c] of v's dtype, threads >= 1 (its first dimension
// sets how many threads scatter). Returns out.
torch::Tensor gram_matvec(torch::Tensor cols, torch::Tensor vals, torch::Tensor v, torch::Tensor workspace) {
  TORCH_CHECK(cols.device().is_cpu() && vals.device().is_cpu() && v.device().is_cpu() && workspace.device().is_cpu(),
              "gram_matvec: CPU tensors only");
  TORCH_CHECK(cols.dtype() == torch::kInt32 && cols.dim() == 2 && cols.is_contiguous(),
              "gram_matvec: cols must be contiguous int32 [n, K]");
  TORCH_CHECK(vals.sizes() == cols.sizes() && vals.is_contiguous(), "gram_matvec: vals must be contiguous [n, K]");
  TORCH_CHECK(v.dim() == 2 && v.size(0) == cols.size(0) && v.is_contiguous() && v.dtype() == vals.dtype(),
              "gram_matvec: v must be contiguous [n, c] of vals' dtype");
  TORCH_CHECK(workspace.dim() == 3 && workspace.size(2) == v.size(1) && workspace.is_contiguous() &&
                  workspace.dtype() == vals.dtype() && workspace.size(0) >= 1,
              "gram_matvec: workspace must be contiguous [threads, n_cols, c] of vals' dtype");
  const int64_t n = cols.size(0), k = cols.size(1), c = v.size(1), n_cols = workspace.size(1);
  // cols must lie in [0, n_cols): checked once by the caller (GramProduct), not on every product
  auto out = torch::empty_like(v);
  const int nt = static_cast<int>(std::min<int64_t>(workspace.size(0), std::max<int64_t>(n, 1)));
  AT_DISPATCH_FLOATING_TYPES(vals.scalar_type(), "gram_matvec", [&] {
    const int32_t* cp = cols.data_ptr<int32_t>();
    const scalar_t* wp = vals.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* ws = workspace.data_ptr<scalar_t>();
    if (c == 1) gram_impl<scalar_t, 1>(cp, wp, vp, op, ws, n, k, n_cols, c, nt);
    else gram_impl<scalar_t, 0>(cp, wp, vp, op, ws, n, k, n_cols, c, nt);
  });
  return out;
}

// gram_sparse: K = J1 J2^T for J1 [n1, P] in CSR (indptr1 int64 [n1 + 1], indices1 int32, data1 float64) and
// J2 [n2, P] given by its transpose in CSR, i.e. J2 in CSC (colptr2 int64 [P + 1], rows2 int32, data2).
// Gustavson's row-by-row product: row i of K accumulates data1 * data2 over the points j sharing a
// column with point i, in a dense accumulator of n2 values per thread; K's rows have unique indices, in
// first-touch order or sorted (``sorted``). Column indices of J1 must lie in [0, P) (the caller checks).
// Parallel over blocks of rows; every block writes its own buffers, joined at the end. Deterministic.
// Returns (indptr int64 [n1 + 1], indices int32 [nnz], data float64 [nnz]).
std::vector<torch::Tensor> gram_sparse(torch::Tensor indptr1, torch::Tensor indices1, torch::Tensor data1,
                                       torch::Tensor colptr2, torch::Tensor rows2, torch::Tensor data2, int64_t n2,
                                       bool sorted) {
  for (const auto* t : {&indptr1, &colptr2})
    TORCH_CHECK(t->dtype() == torch::kInt64 && t->dim() == 1 && t->is_contiguous(), "gram_sparse: int64 pointers");
  for (const auto* t : {&indices1, &rows2})
    TORCH_CHECK(t->dtype() == torch::kInt32 && t->dim() == 1 && t->is_contiguous(), "gram_sparse: int32 indices");
  for (const auto* t : {&data1, &data2})
    TORCH_CHECK(t->dtype() == torch::kFloat64 && t->dim() == 1 && t->is_contiguous(), "gram_sparse: float64 data");
  const int64_t n1 = indptr1.size(0) - 1, p = colptr2.size(0) - 1;
  TORCH_CHECK(n1 >= 0 && p >= 0 && n2 >= 0 && n2 < (int64_t(1) << 31), "gram_sparse: bad sizes");
  const int64_t* ip1 = indptr1.data_ptr<int64_t>();
  const int32_t* ix1 = indices1.data_ptr<int32_t>();
  const double* d1 = data1.data_ptr<double>();
  const int64_t* cp2 = colptr2.data_ptr<int64_t>();
  const int32_t* r2 = rows2.data_ptr<int32_t>();
  const double* d2 = data2.data_ptr<double>();
  TORCH_CHECK(ip1[n1] == indices1.size(0) && indices1.size(0) == data1.size(0) && cp2[p] == rows2.size(0) &&
                  rows2.size(0) == data2.size(0), "gram_sparse: pointer / array lengths disagree");
  const int64_t block = 256;
  const int64_t n_blocks = (n1 + block - 1) / block;
  std::vector<std::vector<int32_t>> out_idx(n_blocks);
  std::vector<std::vector<double>> out_val(n_blocks);
  std::vector<int64_t> row_nnz(n1 + 1, 0);
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> acc(n2, 0.0);
    std::vector<char> seen(n2, 0);
    std::vector<int32_t> touched(static_cast<size_t>(n2) + 1);
    for (int64_t b = b0; b < b1; ++b) {
      auto& idx = out_idx[b];
      auto& val = out_val[b];
      for (int64_t i = b * block; i < std::min(n1, (b + 1) * block); ++i) {
        int64_t cnt = 0;
        for (int64_t a = ip1[i]; a < ip1[i + 1]; ++a) {
          const int32_t col = ix1[a];  // in [0, p): checked by the caller
          const double w = d1[a];
          for (int64_t c = cp2[col]; c < cp2[col + 1]; ++c) {
            const int32_t j = r2[c];
            touched[cnt] = j;  // branch-free append of a first touch
            cnt += 1 - seen[j];
            seen[j] = 1;
            acc[j] += w * d2[c];
          }
        }
        if (sorted) std::sort(touched.begin(), touched.begin() + cnt);
        const size_t base = idx.size();
        idx.resize(base + cnt);
        val.resize(base + cnt);
        for (int64_t t = 0; t < cnt; ++t) {  // first-touch order unless sorted
          const int32_t j = touched[t];
          idx[base + t] = j;
          val[base + t] = acc[j];
          acc[j] = 0.0;
          seen[j] = 0;
        }
        row_nnz[i + 1] = cnt;
      }
    }
  });
  auto indptr = torch::empty({n1 + 1}, torch::kInt64);
  int64_t* op = indptr.data_ptr<int64_t>();
  op[0] = 0;
  for (int64_t i = 0; i < n1; ++i) op[i + 1] = op[i] + row_nnz[i + 1];
  const int64_t nnz = op[n1];
  auto indices = torch::empty({nnz}, torch::kInt32);
  auto data = torch::empty({nnz}, torch::kFloat64);
  int32_t* oi = indices.data_ptr<int32_t>();
  double* ov = data.data_ptr<double>();
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = op[std::min(n1, b * block)];
      std::copy(out_idx[b].begin(), out_idx[b].end(), oi + start);
      std::copy(out_val[b].begin(), out_val[b].end(), ov + start);
    }
  });
  return {indptr, indices, data};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gram_matvec", &gram_matvec, "J (J^T v) for an ELL sparse J (cols int32 [n, K], vals [n, K])");
  m.def("gram_sparse", &gram_sparse, "K = J1 J2^T (CSR) from J1 in CSR and J2 in CSC");
}
