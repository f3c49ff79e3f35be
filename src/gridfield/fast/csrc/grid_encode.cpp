// Fused multi-level grid encoding (HashGrid / DenseGrid) on CPU: forward, backward, double backward.
//
// One kernel family for both grids. Per level: global row offset, row count (hashmap size), hashed
// flag, per-axis factors (coherent primes when hashed, dense strides R**j otherwise; all uint32
// arithmetic exactly as gridfield/functional/hashing.py and tiny-cuda-nn), and the position mapping:
//   mode 0 (hash, tcnn): x01 = (x + 1) * 0.5, pos = x01 * scale + 0.5, cell = floor(pos), no clamping
//                        (border vertices wrap with `% size`, as documented in grids/hash.py);
//   mode 1 (dense):      u = (x + 1) * scale with scale = (R - 1) / 2, clamped to [0, R - 1],
//                        cell = clamp(floor(u), 0, R - 2) (grid_sample align_corners=True, border).
// Corner k has offset (k >> j) & 1 along axis j; its weight is prod_j (frac_j or 1 - frac_j) in axis
// order. Output is level-major [N, L * F]. Parallelism: at::parallel_for (torch's thread pool, so
// torch.set_num_threads applies). Scatter-adds into the table grad either give each thread whole
// levels (no atomics, deterministic; used when L >= threads), or give each thread a block of table
// rows, every thread sweeping all points (no atomics, deterministic; used for fewer levels than
// threads, e.g. one dense level), or split points with atomic adds or with per-thread table copies
// (for measurement). The table grad may be written into a caller's buffer (zeroed here), which the
// Python side reuses between steps.
//
// Python-side signatures are in gridfield/fast/grid_encode.py; a CUDA version would take the same
// arguments.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <cstdint>
#include <vector>

// Loops over corners, axes and (fixed) features are fully unrolled, so corner bits are constants.
#define GF_UNROLL _Pragma("GCC unroll 16")

namespace {

enum Strategy : int64_t { AUTO = 0, LEVELS = 1, ATOMIC = 2, PER_THREAD = 3, ROWS = 4 };

struct Level {
  int64_t offset;
  uint32_t size;
  uint32_t mask;  // size - 1 when size is a power of two, else 0
  bool hashed;
  uint32_t factor[3];
  double scale;
  double hi;  // dense: R - 1
};

std::vector<Level> read_levels(const torch::Tensor& meta_i, const torch::Tensor& meta_f, int dim, int64_t rows) {
  TORCH_CHECK(meta_i.dtype() == torch::kInt64 && meta_i.dim() == 2 && meta_i.size(1) == 6,
              "grid_encode: meta_i must be int64 [L, 6]");
  TORCH_CHECK(meta_f.dtype() == torch::kFloat64 && meta_f.dim() == 2 && meta_f.size(1) == 2 &&
                  meta_f.size(0) == meta_i.size(0),
              "grid_encode: meta_f must be float64 [L, 2]");
  auto mi = meta_i.contiguous().cpu();
  auto mf = meta_f.contiguous().cpu();
  const int64_t* pi = mi.data_ptr<int64_t>();
  const double* pf = mf.data_ptr<double>();
  std::vector<Level> levels(mi.size(0));
  for (int64_t l = 0; l < mi.size(0); ++l) {
    Level& lv = levels[l];
    const int64_t* r = pi + 6 * l;
    TORCH_CHECK(r[1] >= 1 && r[1] <= (int64_t(1) << 32) - 1, "grid_encode: bad level size");
    TORCH_CHECK(r[0] >= 0 && r[0] + r[1] <= rows, "grid_encode: level ", l, " needs rows [", r[0], ", ",
                r[0] + r[1], ") but the table has ", rows);
    lv.offset = r[0];
    lv.size = static_cast<uint32_t>(r[1]);
    lv.mask = (lv.size & (lv.size - 1)) == 0 ? lv.size - 1 : 0;
    lv.hashed = r[2] != 0;
    for (int j = 0; j < 3; ++j) lv.factor[j] = j < dim ? static_cast<uint32_t>(r[3 + j]) : 0u;
    lv.scale = pf[2 * l];
    lv.hi = pf[2 * l + 1];
  }
  return levels;
}

template <typename T>
inline uint32_t to_u32(T fl) {
  // (uint32_t)(int64_t)floor(pos): matches the reference's floor().long() & 0xFFFFFFFF for |pos| < 2**63.
  if (!(fl > T(-9.2e18) && fl < T(9.2e18))) return 0u;  // NaN / huge: any in-range row (memory safety)
  return static_cast<uint32_t>(static_cast<int64_t>(fl));
}

// Everything one point needs at one level.
template <int D, typename T>
struct Cell {
  static constexpr int K = 1 << D;
  int64_t row[K];
  T w[K];
  T lo[D], hi[D];  // 1 - frac, frac
  T dfx[D];        // d frac_j / d x_j (0 where a dense level clamps)

  // KIND: 0 hash mapping + hashed level, 1 hash mapping + dense level, 2 dense grid (clamped)
  template <int KIND>
  inline void locate(const T* xp, const Level& lv) {
    constexpr bool hash_map = KIND != 2;
    constexpr bool hashed = KIND == 0;
    uint32_t c[D];
    GF_UNROLL for (int j = 0; j < D; ++j) {
      T frac;
      if (hash_map) {
        T x01 = (xp[j] + T(1)) * T(0.5);
        T pos = x01 * T(lv.scale) + T(0.5);
        T fl = std::floor(pos);
        frac = pos - fl;
        c[j] = to_u32(fl);
        dfx[j] = T(lv.scale) * T(0.5);
      } else {
        const T top = T(lv.hi);
        T u = (xp[j] + T(1)) * T(lv.scale);
        bool inside = u >= T(0) && u <= top;
        T uc = u < T(0) ? T(0) : (u > top ? top : u);  // NaN stays NaN
        T b = std::floor(uc);
        if (b > top - T(1)) b = top - T(1);
        if (!(b >= T(0))) b = T(0);  // also NaN -> row 0 (the output stays NaN through frac)
        frac = uc - b;
        c[j] = static_cast<uint32_t>(b);
        dfx[j] = inside ? T(lv.scale) : T(0);
      }
      hi[j] = frac;
      lo[j] = T(1) - frac;
    }
    uint32_t a[D][2];
    GF_UNROLL for (int j = 0; j < D; ++j) {
      a[j][0] = c[j] * lv.factor[j];
      a[j][1] = (c[j] + 1u) * lv.factor[j];
    }
    GF_UNROLL for (int k = 0; k < K; ++k) {
      uint32_t h = a[0][k & 1];
      T wk = (k & 1) ? hi[0] : lo[0];
      GF_UNROLL for (int j = 1; j < D; ++j) {
        const int b = (k >> j) & 1;
        h = hashed ? (h ^ a[j][b]) : (h + a[j][b]);
        wk = wk * (b ? hi[j] : lo[j]);
      }
      if (lv.mask) {
        h &= lv.mask;
      } else if (KIND != 2 && h >= lv.size) {  // dense grids never leave their level
        h %= lv.size;
      }
      row[k] = lv.offset + static_cast<int64_t>(h);
      w[k] = wk;
    }
  }

  // d w_k / d frac_j
  inline T dw(int k, int j) const {
    T v = ((k >> j) & 1) ? T(1) : T(-1);
    GF_UNROLL for (int i = 0; i < D; ++i) {
      if (i != j) v = v * (((k >> i) & 1) ? hi[i] : lo[i]);
    }
    return v;
  }

  // d^2 w_k / d frac_i d frac_j, i != j (the n-linear weights have no diagonal second derivative)
  inline T d2w(int k, int i, int j) const {
    T v = ((((k >> i) & 1) ? 1 : -1) * (((k >> j) & 1) ? 1 : -1)) > 0 ? T(1) : T(-1);
    GF_UNROLL for (int m = 0; m < D; ++m) {
      if (m != i && m != j) v = v * (((k >> m) & 1) ? hi[m] : lo[m]);
    }
    return v;
  }
};

template <typename T>
inline void atomic_add(T* p, T v) {
#pragma omp atomic
  *p += v;
}

constexpr int64_t CHUNK = 512;
constexpr int BLOCK = 16;  // points located (and their rows prefetched) one block ahead

// Tables whose rows of the located corners are prefetched (read or written later).
template <typename T>
struct Prefetch {
  const T* read[2] = {nullptr, nullptr};
  const T* write = nullptr;
};

// Call fn(p, cell) for points [b, e) at one level. Points are located one block ahead and the rows
// they will touch are prefetched: the gathers and scatters are latency bound (random rows in tables
// larger than L2), so this keeps many cache misses in flight.
template <int D, typename T, int KIND, class Fn>
inline void sweep_kind(const Level& lv, const T* x, int64_t b, int64_t e, int64_t F, const Prefetch<T>& pf,
                       const Fn& fn) {
  Cell<D, T> buf[2][BLOCK];
  const int64_t row_bytes = F * static_cast<int64_t>(sizeof(T));
  const bool straddle = row_bytes > 64 || 64 % row_bytes != 0;  // some rows cross a 64-byte line
  auto load = [&](Cell<D, T>* cells, int64_t p0) {
    const int cnt = static_cast<int>(std::min<int64_t>(BLOCK, e - p0));
    for (int i = 0; i < cnt; ++i) {
      cells[i].template locate<KIND>(x + (p0 + i) * D, lv);
      GF_UNROLL for (int k = 0; k < Cell<D, T>::K; ++k) {
        const int64_t o = cells[i].row[k] * F;
        if (pf.read[0]) __builtin_prefetch(pf.read[0] + o, 0, 3);
        if (pf.read[1]) __builtin_prefetch(pf.read[1] + o, 0, 3);
        if (pf.write) __builtin_prefetch(pf.write + o, 1, 3);
        if (straddle) {  // also the line of the row's last entry
          const int64_t o2 = o + F - 1;
          if (pf.read[0]) __builtin_prefetch(pf.read[0] + o2, 0, 3);
          if (pf.read[1]) __builtin_prefetch(pf.read[1] + o2, 0, 3);
          if (pf.write) __builtin_prefetch(pf.write + o2, 1, 3);
        }
      }
    }
  };
  if (b >= e) return;
  load(buf[0], b);
  int cur = 0;
  for (int64_t p0 = b; p0 < e; p0 += BLOCK) {
    if (p0 + BLOCK < e) load(buf[cur ^ 1], p0 + BLOCK);
    const int cnt = static_cast<int>(std::min<int64_t>(BLOCK, e - p0));
    for (int i = 0; i < cnt; ++i) fn(p0 + i, buf[cur][i]);
    cur ^= 1;
  }
}

template <int D, typename T, class Fn>
inline void sweep(const Level& lv, const T* x, int64_t b, int64_t e, int mode, int64_t F, const Prefetch<T>& pf,
                  const Fn& fn) {
  if (mode != 0) sweep_kind<D, T, 2>(lv, x, b, e, F, pf, fn);
  else if (lv.hashed) sweep_kind<D, T, 0>(lv, x, b, e, F, pf, fn);
  else sweep_kind<D, T, 1>(lv, x, b, e, F, pf, fn);
}

// Run body(level, n_begin, n_end, thread) over all (level, point) pairs, split by points.
template <class Body>
void by_points(int64_t n, int64_t n_levels, const Body& body) {
  const int64_t chunks = (n + CHUNK - 1) / CHUNK;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    const int tid = at::get_thread_num();
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b = c * CHUNK, e = std::min(n, b + CHUNK);
      for (int64_t l = 0; l < n_levels; ++l) body(l, b, e, tid);
    }
  });
}

// Run body over all pairs, each level owned by one thread (round-robin: balanced, deterministic).
template <class Body>
void by_levels(int64_t n, int64_t n_levels, int nt, const Body& body) {
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t l = t; l < n_levels; l += nt) body(l, 0, n, static_cast<int>(t));
    }
  });
}

// Run body over all pairs with every thread sweeping every point of every level; thread t owns table
// rows [rows t / nt, rows (t + 1) / nt) for the scatter and points [n t / nt, n (t + 1) / nt) for the
// per-point outputs (see Owner). No atomics, deterministic; the corner arithmetic is repeated per thread,
// the scatter's memory traffic is not. For fewer levels than threads (a single dense level).
template <class Body>
void by_rows(int64_t n, int64_t n_levels, int nt, const Body& body) {
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t l = 0; l < n_levels; ++l) body(l, 0, n, static_cast<int>(t));
    }
  });
}

// What one thread writes in ROWS mode: table rows [row_lo, row_hi), per-point outputs of [p_lo, p_hi).
struct Owner {
  int64_t row_lo, row_hi, p_lo, p_hi;
  inline bool row(int64_t r) const { return r >= row_lo && r < row_hi; }
  inline bool point(int64_t p) const { return p >= p_lo && p < p_hi; }
};

inline Owner owner(bool rows_mode, int tid, int nt, int64_t rows, int64_t n) {
  if (!rows_mode) return {0, rows, 0, n};
  return {rows * tid / nt, rows * (tid + 1) / nt, n * tid / nt, n * (tid + 1) / nt};
}

int64_t resolve(int64_t strategy, int64_t n_levels, int nt, int64_t n) {
  if (strategy != AUTO) return strategy;
  if (nt == 1 || n_levels >= nt || n < 4096) return LEVELS;
  return ROWS;
}

// ---------------------------------------------------------------------------------------------------
// forward

// out[i] = sum over threads t of parts[t * count + i] (per-thread partial x-gradients, levels mode).
template <typename T>
void sum_parts(const std::vector<T>& parts, int nt, int64_t count, T* out) {
  at::parallel_for(0, count, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T s = T(0);
      for (int t = 0; t < nt; ++t) s += parts[static_cast<size_t>(t) * count + i];
      out[i] = s;
    }
  });
}

template <int D, int FC, typename T>
void forward_impl(const T* table, const T* x, T* out, const std::vector<Level>& levels, int64_t n,
                  int64_t f_rt, int mode) {
  const int64_t F = FC > 0 ? FC : f_rt;
  const int64_t L = levels.size();
  const int64_t LF = L * F;
  Prefetch<T> pf;
  pf.read[0] = table;
  by_points(n, L, [&](int64_t l, int64_t b, int64_t e, int) {
    sweep<D, T>(levels[l], x, b, e, mode, F, pf, [&](int64_t p, const Cell<D, T>& cell) {
      T* o = out + p * LF + l * F;
      if constexpr (FC > 0) {  // accumulate in registers (o may alias table as far as the compiler knows)
        T acc[FC];
        GF_UNROLL for (int f = 0; f < FC; ++f) acc[f] = T(0);
        GF_UNROLL for (int k = 0; k < Cell<D, T>::K; ++k) {
          const T* r = table + cell.row[k] * FC;
          const T wk = cell.w[k];
          GF_UNROLL for (int f = 0; f < FC; ++f) acc[f] += wk * r[f];
        }
        GF_UNROLL for (int f = 0; f < FC; ++f) o[f] = acc[f];
      } else {
        GF_UNROLL for (int64_t f = 0; f < F; ++f) o[f] = T(0);
        GF_UNROLL for (int k = 0; k < Cell<D, T>::K; ++k) {
          const T* r = table + cell.row[k] * F;
          const T wk = cell.w[k];
          GF_UNROLL for (int64_t f = 0; f < F; ++f) o[f] += wk * r[f];
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------------
// backward: gtable[row_k] += w_k * gout, gx_j += dfx_j * sum_k dw_kj <gout, table[row_k]>

template <int D, int FC, typename T>
void backward_impl(const T* gout, const T* table, const T* x, T* gtable, T* gx, const std::vector<Level>& levels,
                   int64_t n, int64_t rows, int64_t f_rt, int mode, int64_t strategy) {
  const int64_t F = FC > 0 ? FC : f_rt;
  const int64_t L = levels.size();
  const int64_t LF = L * F;
  constexpr int K = Cell<D, T>::K;
  const int nt = at::get_num_threads();
  std::vector<T> gx_parts, gt_parts;
  if (gtable) strategy = resolve(strategy, L, nt, n);
  else strategy = ATOMIC;  // no scatter: plain split by points (each point owned by one thread)
  const bool levels_mode = strategy == LEVELS;
  const bool rows_mode = strategy == ROWS && nt > 1;
  if (gx && levels_mode && nt > 1) gx_parts.assign(static_cast<size_t>(nt) * n * D, T(0));
  if (gtable && strategy == PER_THREAD && nt > 1) gt_parts.assign(static_cast<size_t>(nt - 1) * rows * F, T(0));
  const bool atomic = gtable && strategy == ATOMIC && nt > 1;

  auto body = [&](int64_t l, int64_t b, int64_t e, int tid) {
    T* gxb = gx_parts.empty() ? gx : gx_parts.data() + static_cast<size_t>(tid) * n * D;
    T* gtb = gtable;
    if (!gt_parts.empty() && tid > 0) gtb = gt_parts.data() + static_cast<size_t>(tid - 1) * rows * F;
    Prefetch<T> pf;
    pf.write = gtb;
    if (gxb) pf.read[0] = table;
    const Owner own = owner(rows_mode, tid, nt, rows, n);
    sweep<D, T>(levels[l], x, b, e, mode, F, pf, [&](int64_t p, const Cell<D, T>& cell) {
      const T* g = gout + p * LF + l * F;
      if (gtb) {
        // a register copy of g: the scatter's stores may alias gout as far as the compiler knows
        constexpr int FL = FC > 0 ? FC : 1;
        T gl[FL];
        if constexpr (FC > 0) {
          GF_UNROLL for (int f = 0; f < FC; ++f) gl[f] = g[f];
        }
        GF_UNROLL for (int k = 0; k < K; ++k) {
          if (rows_mode && !own.row(cell.row[k])) continue;
          T* r = gtb + cell.row[k] * F;
          const T wk = cell.w[k];
          if (FC > 0 && !atomic) {
            GF_UNROLL for (int f = 0; f < FL; ++f) r[f] += wk * gl[f];
          } else if (atomic) {
            GF_UNROLL for (int64_t f = 0; f < F; ++f) atomic_add(r + f, wk * g[f]);
          } else {
            GF_UNROLL for (int64_t f = 0; f < F; ++f) r[f] += wk * g[f];
          }
        }
      }
      if (gxb && (!rows_mode || own.point(p))) {
        T v[K];
        GF_UNROLL for (int k = 0; k < K; ++k) {
          const T* r = table + cell.row[k] * F;
          T s = T(0);
          GF_UNROLL for (int64_t f = 0; f < F; ++f) s += g[f] * r[f];
          v[k] = s;
        }
        GF_UNROLL for (int j = 0; j < D; ++j) {
          T s = T(0);
          GF_UNROLL for (int k = 0; k < K; ++k) s += v[k] * cell.dw(k, j);
          gxb[p * D + j] += s * cell.dfx[j];
        }
      }
    });
  };
  if (levels_mode) by_levels(n, L, nt, body);
  else if (rows_mode) by_rows(n, L, nt, body);
  else by_points(n, L, body);

  if (!gx_parts.empty()) sum_parts(gx_parts, nt, n * D, gx);
  if (!gt_parts.empty()) {
    at::parallel_for(0, rows * F, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        T s = gtable[i];
        for (int t = 0; t < nt - 1; ++t) s += gt_parts[static_cast<size_t>(t) * rows * F + i];
        gtable[i] = s;
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// double backward: cotangents (ggtable, ggx) of backward's outputs (gtable, gx) -> grads wrt
// (gout, table, x). With ggf_j = ggx_j * dfx_j and e_k = sum_j ggf_j dw_kj:
//   g_gout[p, l]  = sum_k w_k ggtable[row_k] + e_k table[row_k]
//   g_table[row_k] += e_k * gout[p, l]
//   g_x_j         += dfx_j * ( sum_k dw_kj <gout, ggtable[row_k]>
//                              + sum_{i != j} ggf_i sum_k d2w_kij <gout, table[row_k]> )

template <int D, int FC, typename T>
void double_backward_impl(const T* gout, const T* table, const T* x, const T* ggtable, const T* ggx, T* g_gout,
                          T* g_table, T* g_x, const std::vector<Level>& levels, int64_t n, int64_t rows,
                          int64_t f_rt, int mode, int64_t strategy) {
  const int64_t F = FC > 0 ? FC : f_rt;
  const int64_t L = levels.size();
  const int64_t LF = L * F;
  constexpr int K = Cell<D, T>::K;
  const int nt = at::get_num_threads();
  if (!ggx) g_table = nullptr;  // the table grad only comes through ggx (it is zero otherwise)
  strategy = g_table ? resolve(strategy, L, nt, n) : ATOMIC;
  if (strategy == PER_THREAD) strategy = ATOMIC;
  const bool levels_mode = strategy == LEVELS;
  const bool rows_mode = strategy == ROWS && nt > 1;
  const bool atomic = g_table && strategy == ATOMIC && nt > 1;
  std::vector<T> gx_parts;
  if (g_x && levels_mode && nt > 1) gx_parts.assign(static_cast<size_t>(nt) * n * D, T(0));

  Prefetch<T> pf;
  pf.read[0] = ggtable;
  pf.read[1] = (ggx && (g_gout || g_x)) ? table : nullptr;
  pf.write = g_table;
  auto body = [&](int64_t l, int64_t b, int64_t e, int tid) {
    T* gxb = gx_parts.empty() ? g_x : gx_parts.data() + static_cast<size_t>(tid) * n * D;
    const Owner own = owner(rows_mode, tid, nt, rows, n);
    sweep<D, T>(levels[l], x, b, e, mode, F, pf, [&](int64_t p, const Cell<D, T>& cell) {
      const T* g = gout + p * LF + l * F;
      const bool mine = !rows_mode || own.point(p);
      T ggf[D];
      T ek[K];
      if (ggx) {
        GF_UNROLL for (int j = 0; j < D; ++j) ggf[j] = ggx[p * D + j] * cell.dfx[j];
        GF_UNROLL for (int k = 0; k < K; ++k) {
          T s = T(0);
          GF_UNROLL for (int j = 0; j < D; ++j) s += ggf[j] * cell.dw(k, j);
          ek[k] = s;
        }
      }
      if (g_gout && mine) {
        T* o = g_gout + p * LF + l * F;
        GF_UNROLL for (int64_t f = 0; f < F; ++f) o[f] = T(0);
        GF_UNROLL for (int k = 0; k < K; ++k) {
          if (ggtable) {
            const T* r = ggtable + cell.row[k] * F;
            GF_UNROLL for (int64_t f = 0; f < F; ++f) o[f] += cell.w[k] * r[f];
          }
          if (ggx) {
            const T* r = table + cell.row[k] * F;
            GF_UNROLL for (int64_t f = 0; f < F; ++f) o[f] += ek[k] * r[f];
          }
        }
      }
      if (g_table) {
        GF_UNROLL for (int k = 0; k < K; ++k) {
          if (rows_mode && !own.row(cell.row[k])) continue;
          T* r = g_table + cell.row[k] * F;
          if (atomic) {
            GF_UNROLL for (int64_t f = 0; f < F; ++f) atomic_add(r + f, ek[k] * g[f]);
          } else {
            GF_UNROLL for (int64_t f = 0; f < F; ++f) r[f] += ek[k] * g[f];
          }
        }
      }
      if (gxb && mine) {
        T gf[D];
        GF_UNROLL for (int j = 0; j < D; ++j) gf[j] = T(0);
        if (ggtable) {
          GF_UNROLL for (int k = 0; k < K; ++k) {
            const T* r = ggtable + cell.row[k] * F;
            T s = T(0);
            GF_UNROLL for (int64_t f = 0; f < F; ++f) s += g[f] * r[f];
            GF_UNROLL for (int j = 0; j < D; ++j) gf[j] += s * cell.dw(k, j);
          }
        }
        if (ggx && D > 1) {
          GF_UNROLL for (int k = 0; k < K; ++k) {
            const T* r = table + cell.row[k] * F;
            T s = T(0);
            GF_UNROLL for (int64_t f = 0; f < F; ++f) s += g[f] * r[f];
            GF_UNROLL for (int j = 0; j < D; ++j) {
              T acc = T(0);
              GF_UNROLL for (int i = 0; i < D; ++i) {
                if (i != j) acc += ggf[i] * cell.d2w(k, i, j);
              }
              gf[j] += s * acc;
            }
          }
        }
        GF_UNROLL for (int j = 0; j < D; ++j) gxb[p * D + j] += gf[j] * cell.dfx[j];
      }
    });
  };
  if (levels_mode) by_levels(n, L, nt, body);
  else if (rows_mode) by_rows(n, L, nt, body);
  else by_points(n, L, body);

  if (!gx_parts.empty()) sum_parts(gx_parts, nt, n * D, g_x);
}

// ---------------------------------------------------------------------------------------------------
// dispatch on dim and F

template <typename Fn>
void dispatch_dim_f(int64_t dim, int64_t f, const Fn& fn) {
  auto with_f = [&](auto dtag) {
    constexpr int D = decltype(dtag)::value;
    if (f == 2) fn(std::integral_constant<int, D>{}, std::integral_constant<int, 2>{});
    else if (f == 4) fn(std::integral_constant<int, D>{}, std::integral_constant<int, 4>{});
    else {
      if constexpr (D == 3) {  // the radiance field's density (1) and colour (12) grids
        if (f == 1) return fn(std::integral_constant<int, D>{}, std::integral_constant<int, 1>{});
        if (f == 12) return fn(std::integral_constant<int, D>{}, std::integral_constant<int, 12>{});
      }
      fn(std::integral_constant<int, D>{}, std::integral_constant<int, 0>{});
    }
  };
  switch (dim) {
    case 1: with_f(std::integral_constant<int, 1>{}); break;
    case 2: with_f(std::integral_constant<int, 2>{}); break;
    case 3: with_f(std::integral_constant<int, 3>{}); break;
    default: TORCH_CHECK(false, "grid_encode: dim must be 1, 2 or 3, got ", dim);
  }
}

void check_inputs(const torch::Tensor& table, const torch::Tensor& x) {
  TORCH_CHECK(table.device().is_cpu() && x.device().is_cpu(), "grid_encode (C++): CPU tensors only");
  TORCH_CHECK(table.dim() == 2 && x.dim() == 2, "grid_encode: table [rows, F] and x [N, d] expected");
  TORCH_CHECK(table.scalar_type() == x.scalar_type(), "grid_encode: table and x must share a dtype");
  TORCH_CHECK(table.scalar_type() == torch::kFloat32 || table.scalar_type() == torch::kFloat64,
              "grid_encode: float32 or float64 only");
  TORCH_CHECK(table.is_contiguous() && x.is_contiguous(), "grid_encode: contiguous inputs expected");
}

template <typename T>
const T* ptr_or_null(const torch::Tensor& t) {
  return t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T* mut_or_null(torch::Tensor& t) {
  return t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

// The table gradient: `out` (the caller's reused buffer, overwritten with zeros) when given, else new zeros.
torch::Tensor table_grad(bool need, const torch::Tensor& table, const torch::Tensor& out) {
  if (!need) return torch::empty({0}, table.options());
  if (out.numel() == 0) return torch::zeros_like(table);
  TORCH_CHECK(out.sizes() == table.sizes() && out.scalar_type() == table.scalar_type() && out.is_contiguous() &&
                  out.device() == table.device(),
              "grid_encode: the gradient buffer must be a contiguous tensor shaped and typed like the table");
  auto* base = static_cast<char*>(out.data_ptr());
  const int64_t bytes = out.numel() * static_cast<int64_t>(out.element_size());
  at::parallel_for(0, bytes, 1 << 18, [&](int64_t b, int64_t e) { std::memset(base + b, 0, e - b); });
  return out;
}

}  // namespace

// The support itself: global table rows [N, L, 2**d] (int64) and n-linear weights [N, L, 2**d] (x's dtype) of
// every point at every level, the same as the grids' plain-PyTorch support (used by the GTK toolkit).
std::vector<torch::Tensor> support(torch::Tensor x, torch::Tensor meta_i, torch::Tensor meta_f, int64_t mode,
                                   int64_t rows) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(), "grid_encode.support: contiguous CPU [N, d]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64,
              "grid_encode.support: float32 or float64 points");
  const int64_t dim = x.size(1), n = x.size(0);
  auto levels = read_levels(meta_i, meta_f, dim, rows);
  const int64_t L = static_cast<int64_t>(levels.size()), K = int64_t(1) << dim;
  auto index = torch::empty({n, L, K}, x.options().dtype(torch::kInt64));
  auto weight = torch::empty({n, L, K}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grid_encode_support", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    int64_t* ip = index.data_ptr<int64_t>();
    scalar_t* wp = weight.data_ptr<scalar_t>();
    auto run = [&](auto dc) {
      constexpr int D = decltype(dc)::value;
      constexpr int KK = 1 << D;
      at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) {
        Cell<D, scalar_t> cell;
        for (int64_t i = b; i < e; ++i) {
          for (int64_t l = 0; l < L; ++l) {
            const Level& lv = levels[l];
            if (mode != 0) cell.template locate<2>(xp + i * D, lv);
            else if (lv.hashed) cell.template locate<0>(xp + i * D, lv);
            else cell.template locate<1>(xp + i * D, lv);
            const int64_t o = (i * L + l) * KK;
            GF_UNROLL for (int k = 0; k < KK; ++k) {
              ip[o + k] = cell.row[k];
              wp[o + k] = cell.w[k];
            }
          }
        }
      });
    };
    switch (dim) {
      case 1: run(std::integral_constant<int, 1>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      default: TORCH_CHECK(false, "grid_encode.support: dim must be 1, 2 or 3, got ", dim);
    }
  });
  return {index, weight};
}

torch::Tensor forward(torch::Tensor table, torch::Tensor x, torch::Tensor meta_i, torch::Tensor meta_f,
                      int64_t mode) {
  check_inputs(table, x);
  const int64_t dim = x.size(1), n = x.size(0), F = table.size(1);
  auto levels = read_levels(meta_i, meta_f, dim, table.size(0));
  auto out = torch::empty({n, static_cast<int64_t>(levels.size()) * F}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "grid_encode_forward", [&] {
    dispatch_dim_f(dim, F, [&](auto dc, auto fc) {
      forward_impl<decltype(dc)::value, decltype(fc)::value, scalar_t>(
          table.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), levels, n, F,
          static_cast<int>(mode));
    });
  });
  return out;
}

std::vector<torch::Tensor> backward(torch::Tensor gout, torch::Tensor table, torch::Tensor x, torch::Tensor meta_i,
                                    torch::Tensor meta_f, int64_t mode, bool need_table, bool need_x,
                                    int64_t strategy, torch::Tensor gt_out) {
  check_inputs(table, x);
  const int64_t dim = x.size(1), n = x.size(0), F = table.size(1), rows = table.size(0);
  auto levels = read_levels(meta_i, meta_f, dim, table.size(0));
  TORCH_CHECK(gout.is_contiguous() && gout.scalar_type() == table.scalar_type() && gout.size(0) == n &&
                  gout.size(1) == static_cast<int64_t>(levels.size()) * F,
              "grid_encode: bad grad_out");
  auto gtable = table_grad(need_table, table, gt_out);
  auto gx = need_x ? torch::zeros_like(x) : torch::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "grid_encode_backward", [&] {
    dispatch_dim_f(dim, F, [&](auto dc, auto fc) {
      backward_impl<decltype(dc)::value, decltype(fc)::value, scalar_t>(
          gout.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
          mut_or_null<scalar_t>(gtable), mut_or_null<scalar_t>(gx), levels, n, rows, F, static_cast<int>(mode),
          strategy);
    });
  });
  return {gtable, gx};
}

std::vector<torch::Tensor> double_backward(torch::Tensor gout, torch::Tensor table, torch::Tensor x,
                                           torch::Tensor ggtable, torch::Tensor ggx, torch::Tensor meta_i,
                                           torch::Tensor meta_f, int64_t mode, bool need_gout, bool need_table,
                                           bool need_x, int64_t strategy, torch::Tensor gt_out) {
  check_inputs(table, x);
  const int64_t dim = x.size(1), n = x.size(0), F = table.size(1), rows = table.size(0);
  auto levels = read_levels(meta_i, meta_f, dim, table.size(0));
  TORCH_CHECK(gout.is_contiguous() && gout.size(0) == n && gout.size(1) == static_cast<int64_t>(levels.size()) * F,
              "grid_encode: bad grad_out");
  TORCH_CHECK(ggtable.numel() == 0 || (ggtable.is_contiguous() && ggtable.sizes() == table.sizes()),
              "grid_encode: bad ggtable");
  TORCH_CHECK(ggx.numel() == 0 || (ggx.is_contiguous() && ggx.sizes() == x.sizes()), "grid_encode: bad ggx");
  auto g_gout = need_gout ? torch::empty_like(gout) : torch::empty({0}, gout.options());
  auto g_table = table_grad(need_table, table, gt_out);
  auto g_x = need_x ? torch::zeros_like(x) : torch::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "grid_encode_double_backward", [&] {
    dispatch_dim_f(dim, F, [&](auto dc, auto fc) {
      double_backward_impl<decltype(dc)::value, decltype(fc)::value, scalar_t>(
          gout.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
          ptr_or_null<scalar_t>(ggtable), ptr_or_null<scalar_t>(ggx), mut_or_null<scalar_t>(g_gout),
          mut_or_null<scalar_t>(g_table), mut_or_null<scalar_t>(g_x), levels, n, rows, F, static_cast<int>(mode),
          strategy);
    });
  });
  return {g_gout, g_table, g_x};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gridfield fused grid encoding (hash / dense), CPU";
  m.def("forward", &forward, "features [N, L*F]");
  m.def("support", &support, "(rows int64 [N, L, 2**d], weights [N, L, 2**d]) of every point and level");
  m.def("backward", &backward, "(grad table, grad x); empty tensors where not needed; grad table written into "
        "gt_out when it is not empty");
  m.def("double_backward", &double_backward, "(grad gout, grad table, grad x) of backward's outputs; grad table "
        "written into gt_out when it is not empty");
}
