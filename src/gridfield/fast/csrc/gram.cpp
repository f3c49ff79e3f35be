// Gram-matrix products of a sparse Jacobian stored with a fixed number of entries per row (ELL layout):
// out = J (J^T v), the matrix-free GTK's matvec (gridfield/gtk/operator.py).
//
// J is [n, n_cols] with row i holding cols[i, k] / vals[i, k], k < K (padding entries have val 0;
// repeated columns within a row are allowed and add up). v is [n, c] (c right-hand sides, each a column).
// Step 1, u = J^T v [n_cols, c]: every thread scatters its block of rows into its own slice of the
// caller's workspace [threads, n_cols, c] (no atomics), then the slices are summed (parallel over
// columns). Step 2, out = J u: a gather, parallel over rows. Deterministic for a fixed thread count.
// Memory traffic per product: reading cols and vals twice (12 bytes per entry and pass in float64),
// plus the workspace; the random accesses into u stay within n_cols * c values.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>

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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gram_matvec", &gram_matvec, "J (J^T v) for an ELL sparse J (cols int32 [n, K], vals [n, K])");
}
