// Fused NeRF rendering kernels on CPU: packed ray marching against an occupancy grid, and volume
// rendering weights from densities with a hand-written backward (the nerfacc / Instant-NGP idea,
// written for gridfield's reference semantics).
//
// march: the same samples, bit for bit, as gridfield/render/marching.py (float32 arithmetic in the
//   same order, no FMA: the build has no -march flag, so the compiler cannot contract a*b+c):
//   t0_k = (t_start + offset) + k * step, mid = t0_k + step / 2, kept while mid < t_stop and k < n_steps
//   and the point o + d * mid lies in an occupied cell (u = (x - lo) / (hi - lo) in [0, 1]^3,
//   cell = clamp(int(u * R), 0, R - 1)). mid grows with k, so a ray stops at its first mid >= t_stop, or
//   (max_samples > 0) after its max_samples-th kept sample; it reports how many steps it considered.
//   Two passes over the rays (count, then write), samples of a ray contiguous and front to back.
//   Contracted (unbounded) scenes: the same in warped distances u (u0_k, u0_k + step unwarped to world t0, t1,
//   the grid tested at contract((t0 + t1) / 2)); the Euclidean norm sums in double, so a point within a
//   rounding of a cell face may land in the neighbouring cell (tests allow a few such samples).
// weights: per run of equal ray indices (or per row of a padded [R, S] block), tau = sigma * (t1 - t0),
//   T_i = exp(-sum_{j<i} tau_j) (sum in double), alpha_i = 1 - exp(-tau_i), w_i = T_i alpha_i.
//   Backward: dL/dtau_i = (g_alpha_i + g_w_i T_i) exp(-tau_i) - sum_{j>i} (g_w_j w_j + g_T_j T_j),
//   dL/dsigma_i = dL/dtau_i (t1_i - t0_i), the suffix sum in double.
//
// mlp_forward / mlp_backward: the colour MLP in row chunks, whole chunks per thread (inference: the output
//   alone, hidden activations in per-thread scratch).
//
// Parallelism: at::parallel_for (torch's thread pool: torch.set_num_threads applies). Python-side
// signatures: gridfield/fast/render.py and gridfield/fields/radiance.py; a CUDA version would take the
// same arguments.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

void check_cpu_float(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "render: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, "render: ", name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), "render: ", name, " must be contiguous");
}

struct Occ {
  const bool* bits;  // nullptr: no occupancy grid
  float lo[3], ext[3];
  int64_t res;
  float fres;
};

// The occupancy test of a point x, in the reference's float32 operation order.
inline bool occupied_at(const Occ& g, const float* x) {
  int64_t ijk[3];
  for (int j = 0; j < 3; ++j) {
    const float u = (x[j] - g.lo[j]) / g.ext[j];
    if (!(u >= 0.0f && u <= 1.0f)) return false;
    int64_t c = static_cast<int64_t>(u * g.fres);  // trunc toward zero, like .long()
    c = c < 0 ? 0 : (c > g.res - 1 ? g.res - 1 : c);
    ijk[j] = c;
  }
  return g.bits[(ijk[0] * g.res + ijk[1]) * g.res + ijk[2]];
}

// One sample's occupancy test at o + d * mid.
inline bool occupied(const Occ& g, const float* o, const float* d, float mid) {
  if (g.bits == nullptr) return true;
  const float x[3] = {o[0] + d[0] * mid, o[1] + d[1] * mid, o[2] + d[2] * mid};
  return occupied_at(g, x);
}

// Unbounded scenes (gridfield/render/spaces.py): kind 1 = l2, 2 = linf contraction of x / R; steps uniform
// in the warped distance u (u = t up to R, R^2 / (2R - u) beyond).
struct Warp {
  int64_t kind;
  float R, RR, R2, hi;  // R, R * R, 2 R, the clamp 2 R (1 - 1e-7)
};

inline float unwarp(const Warp& w, float u) {
  if (u <= w.R) return u;
  const float c = std::min(std::max(u, w.R), w.hi);
  return (1.0f / (w.R2 - c)) * w.RR;  // torch's scalar / tensor: reciprocal, then the product
}

// The occupancy test of the contracted point contract(o + d * mid).
inline bool occupied_contracted(const Occ& g, const Warp& w, const float* o, const float* d, float mid) {
  if (g.bits == nullptr) return true;
  float z[3];
  for (int j = 0; j < 3; ++j) z[j] = (o[j] + d[j] * mid) / w.R;
  float n;
  if (w.kind == 1) {
    n = static_cast<float>(std::sqrt(static_cast<double>(z[0]) * z[0] + static_cast<double>(z[1]) * z[1] +
                                     static_cast<double>(z[2]) * z[2]));
  } else {
    n = std::max(std::max(std::fabs(z[0]), std::fabs(z[1])), std::fabs(z[2]));
  }
  if (!(n <= 1.0f)) {
    const float nc = std::max(n, 1.0f);
    const float s = 2.0f - 1.0f / nc;
    for (int j = 0; j < 3; ++j) z[j] = s * z[j] / nc;
  }
  return occupied_at(g, z);
}

template <bool WRITE>
inline int64_t march_one_warped(const Occ& g, const Warp& w, const float* o, const float* d, float start, float stop,
                                float step, float half, int64_t n_steps, int64_t max_samples, int64_t ray,
                                int64_t* ri, float* ts, float* te, int64_t* steps) {
  int64_t n = 0, k = 0;
  for (; k < n_steps && n < max_samples; ++k) {
    const float u0 = start + static_cast<float>(k) * step;
    if (!(u0 + half < stop)) break;
    const float t0 = unwarp(w, u0), t1 = unwarp(w, u0 + step);
    if (occupied_contracted(g, w, o, d, 0.5f * (t0 + t1))) {
      if (WRITE) {
        ri[n] = ray;
        ts[n] = t0;
        te[n] = t1;
      }
      ++n;
    }
  }
  *steps = k;
  return n;
}

template <bool WRITE>
inline int64_t march_one(const Occ& g, const float* o, const float* d, float start, float stop, float step,
                         float half, int64_t n_steps, int64_t max_samples, int64_t ray, int64_t* ri, float* ts,
                         float* te, int64_t* steps) {
  int64_t n = 0, k = 0;
  for (; k < n_steps && n < max_samples; ++k) {
    const float t0 = start + static_cast<float>(k) * step;
    const float mid = t0 + half;
    if (!(mid < stop)) break;
    if (occupied(g, o, d, mid)) {
      if (WRITE) {
        ri[n] = ray;
        ts[n] = t0;
        te[n] = t0 + step;
      }
      ++n;
    }
  }
  *steps = k;
  return n;
}

}  // namespace

// origins, dirs [N, 3]; t_start, t_stop, offset [N] (offset added to t_start first, as the reference);
// binary: bool [R^3] (x slowest) or an empty tensor for no occupancy grid; occ_aabb [6] float32.
// contraction 0: steps in t inside the box; 1 (l2), 2 (linf): t_start, t_stop and step are warped distances,
// the grid lives in contracted space, and the intervals come back in world distances (scene radius `radius`).
// max_samples > 0: a ray stops after that many kept samples (early termination in rounds). The fourth output,
// int64 [N], is the number of steps each ray considered (its next round starts that many steps further).
std::vector<torch::Tensor> march(torch::Tensor origins, torch::Tensor dirs, torch::Tensor t_start,
                                 torch::Tensor t_stop, torch::Tensor offset, int64_t n_steps, double step,
                                 torch::Tensor binary, torch::Tensor occ_aabb, int64_t occ_res, int64_t contraction,
                                 double radius, int64_t max_samples) {
  check_cpu_float(origins, "origins");
  check_cpu_float(dirs, "dirs");
  check_cpu_float(t_start, "t_start");
  check_cpu_float(t_stop, "t_stop");
  check_cpu_float(offset, "offset");
  const int64_t N = origins.size(0);
  TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3 && dirs.sizes() == origins.sizes(),
              "render.march: origins and dirs must be [N, 3]");
  TORCH_CHECK(t_start.numel() == N && t_stop.numel() == N && offset.numel() == N,
              "render.march: t_start, t_stop and offset must be [N]");
  Occ g{};
  g.bits = nullptr;
  if (binary.numel() > 0) {
    TORCH_CHECK(binary.scalar_type() == torch::kBool && binary.is_contiguous() && binary.device().is_cpu(),
                "render.march: binary must be a contiguous CPU bool tensor");
    TORCH_CHECK(binary.numel() == occ_res * occ_res * occ_res, "render.march: binary must hold R^3 cells");
    auto a = occ_aabb.to(torch::kFloat32).contiguous().cpu();
    const float* pa = a.data_ptr<float>();
    for (int j = 0; j < 3; ++j) {
      g.lo[j] = pa[j];
      g.ext[j] = pa[3 + j] - pa[j];  // float32 subtraction, as (hi - lo) in the reference
    }
    g.res = occ_res;
    g.fres = static_cast<float>(occ_res);
    g.bits = binary.data_ptr<bool>();
  }
  TORCH_CHECK(contraction >= 0 && contraction <= 2, "render.march: contraction must be 0, 1 or 2");
  const float R = static_cast<float>(radius);
  const Warp w{contraction, R, static_cast<float>(radius * radius), static_cast<float>(2 * radius),
               static_cast<float>(2 * radius * (1 - 1e-7))};
  const float fstep = static_cast<float>(step), half = static_cast<float>(0.5 * step);
  const float* po = origins.data_ptr<float>();
  const float* pd = dirs.data_ptr<float>();
  const float* p0 = t_start.data_ptr<float>();
  const float* p1 = t_stop.data_ptr<float>();
  const float* pf = offset.data_ptr<float>();
  const int64_t cap = max_samples > 0 ? max_samples : std::numeric_limits<int64_t>::max();
  auto steps = torch::empty({N}, origins.options().dtype(torch::kInt64));
  int64_t* psteps = steps.data_ptr<int64_t>();
  auto one = [&](auto write, int64_t r, int64_t* ri, float* ts, float* te) -> int64_t {
    constexpr bool W = decltype(write)::value;
    if (contraction == 0)
      return march_one<W>(g, po + 3 * r, pd + 3 * r, p0[r] + pf[r], p1[r], fstep, half, n_steps, cap, r, ri, ts, te,
                          psteps + r);
    return march_one_warped<W>(g, w, po + 3 * r, pd + 3 * r, p0[r] + pf[r], p1[r], fstep, half, n_steps, cap, r, ri,
                               ts, te, psteps + r);
  };
  std::vector<int64_t> count(N + 1, 0);
  at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      count[r + 1] = one(std::false_type{}, r, nullptr, nullptr, nullptr);
  });
  for (int64_t r = 0; r < N; ++r) count[r + 1] += count[r];
  const int64_t M = count[N];
  auto ray_idx = torch::empty({M}, origins.options().dtype(torch::kInt64));
  auto ts = torch::empty({M}, origins.options());
  auto te = torch::empty({M}, origins.options());
  int64_t* pri = ray_idx.data_ptr<int64_t>();
  float* pts = ts.data_ptr<float>();
  float* pte = te.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      if (count[r + 1] == count[r]) continue;
      const int64_t s = count[r];
      one(std::true_type{}, r, pri + s, pts + s, pte + s);
    }
  });
  return {ray_idx, ts, te, steps};
}

namespace {

// Segment boundaries [S + 1]: runs of equal ray indices (packed) or rows of `row` samples (padded).
std::vector<int64_t> segments(const torch::Tensor& ray_indices, int64_t M, int64_t row) {
  std::vector<int64_t> seg;
  if (ray_indices.numel() == 0) {
    TORCH_CHECK(row > 0 || M == 0, "render.weights: padded inputs need a row length");
    for (int64_t s = 0; s <= M; s += (row > 0 ? row : 1)) seg.push_back(s);
    if (seg.back() != M) seg.push_back(M);
    return seg;
  }
  TORCH_CHECK(ray_indices.scalar_type() == torch::kInt64 && ray_indices.is_contiguous() &&
                  ray_indices.device().is_cpu() && ray_indices.numel() == M,
              "render.weights: ray_indices must be a contiguous CPU int64 [M]");
  const int64_t* ri = ray_indices.data_ptr<int64_t>();
  seg.reserve(M / 8 + 2);
  for (int64_t i = 0; i < M; ++i)
    if (i == 0 || ri[i] != ri[i - 1]) seg.push_back(i);
  seg.push_back(M);
  return seg;
}

}  // namespace

// sigmas, t_starts, t_ends [M] (or [R * S] padded with row = S); returns w, T, alpha [M].
std::vector<torch::Tensor> weights_forward(torch::Tensor sigmas, torch::Tensor t_starts, torch::Tensor t_ends,
                                           torch::Tensor ray_indices, int64_t row) {
  check_cpu_float(sigmas, "sigmas");
  check_cpu_float(t_starts, "t_starts");
  check_cpu_float(t_ends, "t_ends");
  const int64_t M = sigmas.numel();
  TORCH_CHECK(t_starts.numel() == M && t_ends.numel() == M, "render.weights: inputs must share one shape");
  auto seg = segments(ray_indices, M, row);
  auto w = torch::empty_like(sigmas), T = torch::empty_like(sigmas), alpha = torch::empty_like(sigmas);
  const float *ps = sigmas.data_ptr<float>(), *p0 = t_starts.data_ptr<float>(), *p1 = t_ends.data_ptr<float>();
  float *pw = w.data_ptr<float>(), *pT = T.data_ptr<float>(), *pa = alpha.data_ptr<float>();
  const int64_t S = static_cast<int64_t>(seg.size()) - 1;
  at::parallel_for(0, S, 256, [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) {
      double acc = 0.0;
      for (int64_t i = seg[s]; i < seg[s + 1]; ++i) {
        const float tau = ps[i] * (p1[i] - p0[i]);
        const float tr = std::exp(-static_cast<float>(acc));
        const float a = 1.0f - std::exp(-tau);
        pT[i] = tr;
        pa[i] = a;
        pw[i] = tr * a;
        acc += static_cast<double>(tau);
      }
    }
  });
  return {w, T, alpha};
}

// Gradient wrt sigmas [M] from the gradients of w, T, alpha (empty tensors count as zero).
torch::Tensor weights_backward(torch::Tensor g_w, torch::Tensor g_T, torch::Tensor g_alpha, torch::Tensor sigmas,
                               torch::Tensor t_starts, torch::Tensor t_ends, torch::Tensor w, torch::Tensor T,
                               torch::Tensor ray_indices, int64_t row) {
  const int64_t M = sigmas.numel();
  auto seg = segments(ray_indices, M, row);
  auto ok = [&](const torch::Tensor& t, const char* n) {
    if (t.numel() == 0) return (const float*)nullptr;
    check_cpu_float(t, n);
    TORCH_CHECK(t.numel() == M, "render.weights_backward: ", n, " must have M elements");
    return (const float*)t.data_ptr<float>();
  };
  const float *gw = ok(g_w, "g_w"), *gT = ok(g_T, "g_T"), *ga = ok(g_alpha, "g_alpha");
  const float *p0 = t_starts.data_ptr<float>(), *p1 = t_ends.data_ptr<float>();
  check_cpu_float(w, "w");
  check_cpu_float(T, "T");
  const float *pw = w.data_ptr<float>(), *pT = T.data_ptr<float>(), *ps = sigmas.data_ptr<float>();
  auto out = torch::empty_like(sigmas);
  float* po = out.data_ptr<float>();
  const int64_t S = static_cast<int64_t>(seg.size()) - 1;
  at::parallel_for(0, S, 256, [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) {
      double suffix = 0.0;  // sum_{j > i} (g_w_j w_j + g_T_j T_j)
      for (int64_t i = seg[s + 1] - 1; i >= seg[s]; --i) {
        const float one_minus_a = std::exp(-(ps[i] * (p1[i] - p0[i])));  // d alpha_i / d tau_i
        const double local = (ga ? static_cast<double>(ga[i]) : 0.0) + (gw ? static_cast<double>(gw[i]) * pT[i] : 0.0);
        const double gtau = local * one_minus_a - suffix;
        po[i] = static_cast<float>(gtau * static_cast<double>(p1[i] - p0[i]));
        suffix += (gw ? static_cast<double>(gw[i]) * pw[i] : 0.0) + (gT ? static_cast<double>(gT[i]) * pT[i] : 0.0);
      }
    }
  });
  return out;
}


// ---------------------------------------------------------------------------------------------------
// Tiny ReLU MLP (the colour head) in row chunks, one parallel region per pass: each thread runs whole
// chunks through every layer with single-threaded GEMMs (the activations of a chunk stay in its cache),
// instead of one parallel region per layer and chunk. Backward: per-thread weight/bias gradient
// partials, summed in thread order at the end (deterministic for a given thread count).

// keep_hidden = false (inference): only the output is returned; each thread keeps the hidden activations of
// its chunk in a scratch buffer of its own instead of writing (and faulting in) [M, width] tensors.
std::vector<torch::Tensor> mlp_forward(torch::Tensor x, std::vector<torch::Tensor> ws, std::vector<torch::Tensor> bs,
                                       int64_t chunk, bool keep_hidden) {
  check_cpu_float(x, "x");
  x = x.detach();  // the GEMMs write into their outputs (no autograd here; the caller's Function has it)
  const int64_t L = static_cast<int64_t>(ws.size()), M = x.size(0);
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(bs.size()) == L && chunk >= 1, "render.mlp_forward: bad layers");
  std::vector<torch::Tensor> acts, wt;
  for (int64_t i = 0; i < L; ++i) {
    if (keep_hidden || i == L - 1) acts.push_back(torch::empty({M, ws[i].size(0)}, x.options()));
    wt.push_back(ws[i].detach().t());
    bs[i] = bs[i].detach();
  }
  torch::Tensor& output = acts.back();
  const int64_t nc = (M + chunk - 1) / chunk;
  at::parallel_for(0, nc, 1, [&](int64_t cb, int64_t ce) {
    std::vector<torch::Tensor> scratch;
    if (!keep_hidden)
      for (int64_t i = 0; i + 1 < L; ++i) scratch.push_back(torch::empty({chunk, ws[i].size(0)}, x.options()));
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t s = c * chunk, e = std::min(M, s + chunk);
      torch::Tensor h = x.slice(0, s, e);
      for (int64_t i = 0; i < L; ++i) {
        torch::Tensor out = i == L - 1 ? output.slice(0, s, e)
                            : keep_hidden ? acts[i].slice(0, s, e)
                                          : scratch[i].slice(0, 0, e - s);
        at::addmm_out(out, bs[i], h, wt[i]);
        if (i < L - 1) out.clamp_min_(0);
        h = out;
      }
    }
  });
  return acts;
}

// Returns [gW_0, gb_0, ..., gW_{L-1}, gb_{L-1}, g_feat] (g_feat empty unless need_feat).
std::vector<torch::Tensor> mlp_backward(torch::Tensor grad, torch::Tensor x, std::vector<torch::Tensor> ws,
                                        std::vector<torch::Tensor> hidden, int64_t n_feat, bool need_feat,
                                        int64_t chunk) {
  check_cpu_float(grad, "grad");
  check_cpu_float(x, "x");
  const int64_t L = static_cast<int64_t>(ws.size()), M = x.size(0);
  TORCH_CHECK(static_cast<int64_t>(hidden.size()) == L - 1, "render.mlp_backward: need L - 1 hidden activations");
  for (auto& w : ws) w = w.detach();
  const int64_t nc = (M + chunk - 1) / chunk;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nc));
  std::vector<std::vector<torch::Tensor>> gw(nt), gb(nt);
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t i = 0; i < L; ++i) {
      gw[t].push_back(torch::zeros_like(ws[i]));
      gb[t].push_back(torch::zeros({ws[i].size(0)}, ws[i].options()));
    }
  torch::Tensor gfeat = need_feat ? torch::empty({M, n_feat}, x.options()) : torch::empty({0}, x.options());
  torch::Tensor w_feat = ws[0].slice(1, 0, n_feat);
  // contiguous ranges of chunks per worker; worker t owns partial t
  at::parallel_for(0, nt, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t c0 = nc * t / nt, c1 = nc * (t + 1) / nt;
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t s = c * chunk, e = std::min(M, s + chunk);
        torch::Tensor g = grad.slice(0, s, e);
        for (int64_t i = L - 1; i >= 0; --i) {
          torch::Tensor inp = i == 0 ? x.slice(0, s, e) : hidden[i - 1].slice(0, s, e);
          gw[t][i].addmm_(g.t(), inp);
          gb[t][i].add_(g.sum(0));
          if (i > 0) g = at::threshold_backward(at::mm(g, ws[i]), inp, 0);
        }
        if (need_feat) {
          torch::Tensor out = gfeat.slice(0, s, e);
          at::mm_out(out, g, w_feat);
        }
      }
    }
  });
  std::vector<torch::Tensor> res;
  for (int64_t i = 0; i < L; ++i) {
    for (int64_t t = 1; t < nt; ++t) {
      gw[0][i].add_(gw[t][i]);
      gb[0][i].add_(gb[t][i]);
    }
    res.push_back(gw[0][i]);
    res.push_back(gb[0][i]);
  }
  res.push_back(gfeat);
  return res;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("march", &march, "packed samples (ray_indices, t_starts, t_ends) and steps considered per ray");
  m.def("weights_forward", &weights_forward, "(w, T, alpha) per sample");
  m.def("weights_backward", &weights_backward, "grad sigmas");
  m.def("mlp_forward", &mlp_forward, "activations of every layer (ReLU applied to hidden ones), or the output alone");
  m.def("mlp_backward", &mlp_backward, "[gW_i, gb_i]* + [g_feat]");
}
