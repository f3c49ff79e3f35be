// MulFAGrid fused CPU kernel: layout support + MFN kernel network + normalisation + gather, one pass per point.
//
// One support term (a dense level, one plane factor or one hash level) per call. Forward: val [N, F] = sum_k phi_k table[idx_k].
// Backward recomputes the per-point forward (nothing big is saved) and returns the gradients of the kernel
// parameters; the table gradient is accumulated into `dtable`. Gradients wrt x are not computed: the Python
// side uses the plain-PyTorch reference when x requires grad (eikonal losses need double backward).
//
// The equations are those of gridfield/grids/mulfa_kernel.py and mulfagrid.py (the reference):
//   u = clamp((x + 1) (R - 1) / 2, 0, R - 1), base = clamp(floor(u), 0, R - 2), hat_k = prod_j (1 - |u_j - v_kj|)
//   (a hash level, HashGrid's tcnn mapping: u = (x + 1) scale / 2 + 0.5, base = floor(u), unclamped; rows
//   XOR_j (uint32)(v_j) prime_j, or sum_j (uint32)(v_j) stride_j on a dense level, modulo the level's size)
//   z1 = [sin(pi 2^l u), cos(pi 2^l u)], h0 = W0 z1 + b0
//   z_0k = h0 * sin(Om_0 v_hat_k + psi_0), z_mk = (W_m z_{m-1,k} + b_m) * sin(Om_m v_hat_k + psi_m)
//   raw_k = w_out . z_{M-1,k} + b_out, then the "stable" or "paper" normalisation.
// Layout of the work: points are processed in tiles of P (64 / 2^a, at least 8) with every activation stored
// [channel][corner][point], so the W x W products and all elementwise math vectorise across corner-points
// (W = 16 -> eight 8-wide accumulators per output channel). Kernel-parameter gradients are accumulated per
// tile in 8-lane partial sums, flushed into double totals every 8 tiles; threads (OpenMP, torch's thread
// count) take contiguous point ranges and the table scatter is split by rows (no atomics).
// The filter argument is split as A(point) + B_k (B_k depends only on the corner bits), so one sincos per
// point, layer and channel serves all 2^a corners: sin(A + B) = sin A cos B + cos A sin B.
// sin/cos (and softplus) are vectorisable polynomial routines (float: cephes, double: fdlibm, ~1 ulp;
// softplus in float for float32 grids, ~2 ulp),
// since the build flags have no -ffast-math and libm calls would stay scalar. The hot loops are compiled
// twice, for AVX2+FMA (chosen at run time when the CPU has it) and for baseline x86-64.
//
// A CUDA version would sit beside this file with the same Python signature (dispatch on x.device()).

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#define GF_INLINE inline __attribute__((always_inline))

namespace {

// The kernels below may ignore floating-point exception flags (nothing reads them): this lets GCC
// if-convert and vectorise comparisons, clamps and floor without -ffast-math (whose value-changing
// rewrites we do not want). Scoped to this file's kernels only.
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")

// Local min/max (std:: versions, compiled outside these options, would not be inlined here).
template <typename T>
GF_INLINE T gmin(T a, T b) { return b < a ? b : a; }
template <typename T>
GF_INLINE T gmax(T a, T b) { return a < b ? b : a; }
template <typename T>
GF_INLINE T gabs(T a) { return a < T(0) ? -a : a; }

// ------------------------------------------------------------------------------------------------
// Vectorisable double-precision sin/cos and softplus (the compiler flags have no -ffast-math, so libm
// calls would stay scalar). Accurate to ~1 ulp in double; arguments with |x| >= 1e9 use libm.
// ------------------------------------------------------------------------------------------------
constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52: x + kMagic - kMagic rounds to an integer

GF_INLINE void sincos_array(const double* __restrict x, double* __restrict s, double* __restrict c, int n) {
  int huge = 0;
  constexpr double two_over_pi = 0.63661977236758134308;
  constexpr double p1 = 1.57079632673412561417e+00;  // fdlibm pio2_1 (33 bits of pi/2)
  constexpr double p1t = 6.07710050650619224932e-11;  // pi/2 - pio2_1
  constexpr double S1 = -1.66666666666666324348e-01, S2 = 8.33333333332248946124e-03,
                   S3 = -1.98412698298579493134e-04, S4 = 2.75573137070700676789e-06,
                   S5 = -2.50507602534068634195e-08, S6 = 1.58969099521155010221e-10;
  constexpr double C1 = 4.16666666666666019037e-02, C2 = -1.38888888888741095749e-03,
                   C3 = 2.48015872894767294178e-05, C4 = -2.75573143513906633035e-07,
                   C5 = 2.08757232129817482790e-09, C6 = -1.13596475577881948265e-11;
#pragma omp simd reduction(+ : huge)
  for (int i = 0; i < n; ++i) {
    const double xi = x[i];
    huge += !(gabs(xi) < 1e9);
    const double t = xi * two_over_pi + kMagic;
    const double k = t - kMagic;
    int64_t q;
    std::memcpy(&q, &t, 8);  // low bits of the mantissa = k mod 4 (two's complement)
    q &= 3;
    const double r = (xi - k * p1) - k * p1t;
    const double z = r * r;
    const double sr = r + r * z * (S1 + z * (S2 + z * (S3 + z * (S4 + z * (S5 + z * S6)))));
    const double cr = 1.0 - 0.5 * z + z * z * (C1 + z * (C2 + z * (C3 + z * (C4 + z * (C5 + z * C6)))));
    const bool odd = (q & 1) != 0;
    const double ss = odd ? cr : sr, cc = odd ? sr : cr;
    s[i] = (q & 2) ? -ss : ss;
    c[i] = ((q + 1) & 2) ? -cc : cc;
  }
  if (huge == 0) return;
  for (int i = 0; i < n; ++i) {
    if (!(gabs(x[i]) < 1e9)) {  // huge or non-finite arguments: libm
      s[i] = std::sin(x[i]);
      c[i] = std::cos(x[i]);
    }
  }
}

// The same in float (8 lanes): Cody-Waite reduction with cephes' three-part pi/2 and cephes sinf/cosf
// polynomials (~1 ulp); arguments with |x| > 8192 go through the double routine.
GF_INLINE void sincos_array(const float* __restrict x, float* __restrict s, float* __restrict c, int n) {
  constexpr float two_over_pi = 0.636619772367581343f, magic = 12582912.0f;  // 1.5 * 2^23
  constexpr float DP1 = 1.5703125f, DP2 = 4.837512969970703125e-4f, DP3 = 7.54978995489188216e-8f;
  int huge = 0;
#pragma omp simd reduction(+ : huge)
  for (int i = 0; i < n; ++i) {
    const float xi = x[i];
    huge += !(gabs(xi) <= 8192.0f);
    const float t = xi * two_over_pi + magic;
    const float k = t - magic;
    int32_t q;
    std::memcpy(&q, &t, 4);
    q &= 3;
    const float r = ((xi - k * DP1) - k * DP2) - k * DP3;
    const float z = r * r;
    const float sr = r + r * z * (-1.6666654611e-1f + z * (8.3321608736e-3f + z * -1.9515295891e-4f));
    const float cr = 1.0f - 0.5f * z + z * z * (4.166664568298827e-2f + z * (-1.388731625493765e-3f + z * 2.443315711809948e-5f));
    const bool odd = (q & 1) != 0;
    const float ss = odd ? cr : sr, cc = odd ? sr : cr;
    s[i] = (q & 2) ? -ss : ss;
    c[i] = ((q + 1) & 2) ? -cc : cc;
  }
  if (huge == 0) return;
  for (int i = 0; i < n; ++i) {
    if (!(gabs(x[i]) <= 8192.0f)) {
      const double xd = static_cast<double>(x[i]);
      double sd, cd;
      sincos_array(&xd, &sd, &cd, 1);
      s[i] = static_cast<float>(sd);
      c[i] = static_cast<float>(cd);
    }
  }
}

// The same in float (8 lanes, for float32 grids; ~2 ulp): exp(-|x|) by Cody-Waite reduction and a degree-7
// Taylor polynomial (|x| capped at 87, where exp(-|x|) is below float's smallest normal), log1p(y) as
// 2 atanh(y / (2 + y)) to s^15.
GF_INLINE void softplus_array(const float* __restrict x, float* __restrict sp, float* __restrict sig, int n) {
  constexpr float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  constexpr float magic = 12582912.0f;  // 1.5 * 2^23
#pragma omp simd
  for (int i = 0; i < n; ++i) {
    const float xi = x[i];
    const float axi = gabs(xi);
    const float ax = axi < 87.0f ? axi : 87.0f;
    const float t = -ax * log2e + magic;
    const float k = t - magic;
    int32_t kb;
    std::memcpy(&kb, &t, 4);
    kb = (kb - int32_t(0x4B400000) + 127) << 23;  // bits(t) - bits(magic) = k; biased exponent
    float two_k;
    std::memcpy(&two_k, &kb, 4);
    const float r = (-ax - k * ln2_hi) - k * ln2_lo;  // |r| <= ln2 / 2
    float e = 1.0f / 5040.0f;
    e = e * r + 1.0f / 720.0f;
    e = e * r + 1.0f / 120.0f;
    e = e * r + 1.0f / 24.0f;
    e = e * r + 1.0f / 6.0f;
    e = e * r + 0.5f;
    e = e * r + 1.0f;
    e = e * r + 1.0f;
    const float y = e * two_k;
    const float s = y / (2.0f + y);
    const float s2 = s * s;
    float a = 1.0f / 15.0f;
    a = a * s2 + 1.0f / 13.0f;
    a = a * s2 + 1.0f / 11.0f;
    a = a * s2 + 1.0f / 9.0f;
    a = a * s2 + 1.0f / 7.0f;
    a = a * s2 + 1.0f / 5.0f;
    a = a * s2 + 1.0f / 3.0f;
    a = a * s2 + 1.0f;
    const float l1p = 2.0f * s * a;
    const bool big = xi > 20.0f;
    sp[i] = big ? xi : (xi > 0.0f ? xi : 0.0f) + l1p;
    const float sg = (xi >= 0.0f ? 1.0f : y) / (1.0f + y);
    sig[i] = big ? 1.0f : sg;
  }
}

// softplus(x) = log1p(exp(x)) (x for x > 20, as torch) and its derivative sigmoid(x) (1 for x > 20).
// x in [-1e4, 1e4] (clamped by the caller).
GF_INLINE void softplus_array(const double* __restrict x, double* __restrict sp, double* __restrict sig, int n) {
  constexpr double log2e = 1.4426950408889634074, ln2_hi = 6.93147180369123816490e-01,
                   ln2_lo = 1.90821492927058770002e-10;
#pragma omp simd
  for (int i = 0; i < n; ++i) {
    const double xi = x[i];
    const double axi = gabs(xi);
    const double ax = axi < 700.0 ? axi : 700.0;
    // y = exp(-ax) in (0, 1]
    const double t = -ax * log2e + kMagic;
    const double k = t - kMagic;
    int64_t kb;
    std::memcpy(&kb, &t, 8);
    kb = (kb - int64_t(0x4338000000000000) + 1023) << 52;  // bits(t) - bits(kMagic) = k; biased exponent
    double two_k;
    std::memcpy(&two_k, &kb, 8);
    const double r = (-ax - k * ln2_hi) - k * ln2_lo;  // |r| <= ln2 / 2
    double e = 1.0 / 479001600.0;                      // Taylor to r^12 / 12!
    e = e * r + 1.0 / 39916800.0;
    e = e * r + 1.0 / 3628800.0;
    e = e * r + 1.0 / 362880.0;
    e = e * r + 1.0 / 40320.0;
    e = e * r + 1.0 / 5040.0;
    e = e * r + 1.0 / 720.0;
    e = e * r + 1.0 / 120.0;
    e = e * r + 1.0 / 24.0;
    e = e * r + 1.0 / 6.0;
    e = e * r + 0.5;
    e = e * r + 1.0;
    e = e * r + 1.0;
    const double y = e * two_k;
    // log1p(y), y in (0, 1]: 2 atanh(s), s = y / (2 + y) in (0, 1/3]
    const double s = y / (2.0 + y);
    const double s2 = s * s;
    double a = 1.0 / 37.0;
    a = a * s2 + 1.0 / 35.0;
    a = a * s2 + 1.0 / 33.0;
    a = a * s2 + 1.0 / 31.0;
    a = a * s2 + 1.0 / 29.0;
    a = a * s2 + 1.0 / 27.0;
    a = a * s2 + 1.0 / 25.0;
    a = a * s2 + 1.0 / 23.0;
    a = a * s2 + 1.0 / 21.0;
    a = a * s2 + 1.0 / 19.0;
    a = a * s2 + 1.0 / 17.0;
    a = a * s2 + 1.0 / 15.0;
    a = a * s2 + 1.0 / 13.0;
    a = a * s2 + 1.0 / 11.0;
    a = a * s2 + 1.0 / 9.0;
    a = a * s2 + 1.0 / 7.0;
    a = a * s2 + 1.0 / 5.0;
    a = a * s2 + 1.0 / 3.0;
    a = a * s2 + 1.0;
    const double l1p = 2.0 * s * a;
    const bool big = xi > 20.0;
    sp[i] = big ? xi : (xi > 0.0 ? xi : 0.0) + l1p;
    const double sg = (xi >= 0.0 ? 1.0 : y) / (1.0 + y);  // no division inside a branch: vectorisable
    sig[i] = big ? 1.0 : sg;
  }
}

// ------------------------------------------------------------------------------------------------
// One term's constants and parameters (raw pointers into contiguous tensors)
// ------------------------------------------------------------------------------------------------
template <typename T>
struct Term {
  int64_t n, d, a, K, F, L, M, W, D0;  // points, x dim, lattice axes, corners, features, octaves, layers, width, 2La
  int64_t r, offset;
  bool hash_map, hashed;  // HashGrid level (tcnn mapping, unclamped); its vertices hashed (else strided)
  int64_t size;           // a hash level's rows (modulus)
  uint32_t mask;          // size - 1 when size is a power of two, else 0
  uint32_t factor[3];     // a hash level's per-axis primes or strides
  T shift;                // 0.5 on a hash level, else 0
  int64_t axes[3];
  int64_t stride[3];
  int form;  // 0 stable, 1 paper
  T floor_, eps, hc_t, step_t;  // floor, paper_eps, T(0.5 ), T(2 / (R-1))
  double step;
  const T* x;
  const T* table;
  const T* W0;     // [W][D0]
  const T* b0;     // [W]
  const T* Wh;     // [M-1][W(out)][W(in)]
  const T* bh;     // [M-1][W]
  const T* psi;    // [M][W]
  const T* wout;   // [W]
  T bout;
  const T* gscale;       // [L]: T(pi 2^l), as the reference computes it
  const T* cBt;          // [M][K][W]: cos of the corner part of the filter argument (rounded to T)
  const T* sBt;          // [M][K][W]: its sin
  const T* omegaT;       // [M][W][a]: Omega = theta * (R - 1) / 2 (in T, as the reference)
  std::vector<T> gscale_v, cBt_v, sBt_v, omegaT_v;  // owners of the arrays above
  std::vector<double> omega_v;
};

// Points per tile (the vectorised axis): 64 corner-points per tile, at least 8 points.
template <int K>
constexpr int64_t tile_points() { return K >= 8 ? 8 : 64 / K; }

// Per-thread workspace of one tile of P points; activations laid out [.., channel][corner][point].
template <typename T, int K>
struct Tile {
  static constexpr int64_t P = tile_points<K>();
  static constexpr int64_t KP = K * P;
  int64_t np = 0;  // valid points in the tile
  // raw pointers into three arenas (std::vector accessors would not be inlined under this file's options)
  T *u, *frac, *vb, *vhat, *hat, *targ, *z1, *h0, *A, *sA, *cA, *f, *g, *pre, *z, *raw, *phi, *sig, *S, *rawc;
  T *dphi, *draw, *dz, *dp, *dh0;
  double *rawd, *spd, *sigd;
  int64_t* idx;
  uint8_t* clamped;
  std::vector<T> bufT;
  std::vector<double> bufD;
  std::vector<int64_t> bufI;
  std::vector<uint8_t> bufB;
  // shapes: u, frac, vb [a][P]; vhat [a][KP]; hat, idx, raw, phi, sig, rawd, spd, sigd, dphi, draw [KP];
  // targ [La][P]; z1 [D0][P] (sines then cosines); h0, dh0 [W][P]; A, sA, cA [M][W][P];
  // f, g, pre, z [M][W][KP]; dz, dp [W][KP]; S, clamped [P]; rawc [KP] (clamped raw, float softplus)
  explicit Tile(const Term<T>& t) {
    const int64_t a = t.a, W = t.W, M = t.M, La = t.L * t.a;
    const int64_t nT[] = {a * P, a * P, a * P, a * KP, KP, La * P, t.D0 * P, W * P, M * W * P, M * W * P,
                          M * W * P, M * W * KP, M * W * KP, M * W * KP, M * W * KP, KP, KP, KP, P,
                          KP, KP, W * KP, W * KP, W * P, KP};
    T** pT[] = {&u, &frac, &vb, &vhat, &hat, &targ, &z1, &h0, &A, &sA, &cA, &f, &g, &pre, &z, &raw, &phi, &sig, &S,
                &dphi, &draw, &dz, &dp, &dh0, &rawc};
    const int64_t nD[] = {KP, KP, KP};
    double** pD[] = {&rawd, &spd, &sigd};
    auto pad = [](int64_t n) { return (n + 15) / 16 * 16; };
    int64_t tot = 0;
    for (int64_t n : nT) tot += pad(n);
    bufT.assign(tot, T(0));
    tot = 0;
    for (size_t i = 0; i < sizeof(nT) / sizeof(nT[0]); ++i) {
      *pT[i] = bufT.data() + tot;
      tot += pad(nT[i]);
    }
    tot = 0;
    for (int64_t n : nD) tot += pad(n);
    bufD.assign(tot, 0.0);
    tot = 0;
    for (size_t i = 0; i < sizeof(nD) / sizeof(nD[0]); ++i) {
      *pD[i] = bufD.data() + tot;
      tot += pad(nD[i]);
    }
    bufI.assign(KP, 0);
    idx = bufI.data();
    bufB.assign(P, 0);
    clamped = bufB.data();
  }
};

// Forward of the tile of points [i0, i0 + np) (np <= P; padding lanes repeat the last point).
// NeedG: also store g = cos(filter argument) (needed by the backward only).
template <typename T, int K, bool NeedG>
GF_INLINE void tile_forward(const Term<T>& t, Tile<T, K>& w, int64_t i0, int64_t np) {
  constexpr int64_t P = Tile<T, K>::P;
  constexpr int64_t KP = Tile<T, K>::KP;
  const int64_t a = t.a, W = t.W, M = t.M, L = t.L, La = L * a;
  w.np = np;
  const T rmax = T(t.r - 1), bmax = T(t.r - 2);
  int64_t base[3][P];
  for (int64_t j = 0; j < a; ++j)
    for (int64_t p = 0; p < P; ++p) {
      const int64_t i = i0 + gmin(p, np - 1);
      T uj = (t.x[i * t.d + t.axes[j]] + T(1)) * t.hc_t;
      T bj;
      if (t.hash_map) {
        uj += t.shift;
        bj = static_cast<T>(__builtin_floor(uj));
      } else {
        uj = gmin(gmax(uj, T(0)), rmax);
        bj = gmin(gmax(static_cast<T>(__builtin_floor(uj)), T(0)), bmax);
      }
      w.u[j * P + p] = uj;
      w.frac[j * P + p] = uj - bj;
      base[j][p] = static_cast<int64_t>(bj);
      w.vb[j * P + p] = bj * t.step_t - T(1);
    }
  for (int64_t k = 0; k < K; ++k)
    for (int64_t p = 0; p < P; ++p) {
      T h = T(1);
      int64_t row = t.offset;
      for (int64_t j = 0; j < a; ++j) {
        const int64_t bit = (k >> j) & 1;
        const T fr = w.frac[j * P + p];
        h *= bit ? fr : T(1) - fr;
        row += (base[j][p] + bit) * t.stride[j];
        w.vhat[j * KP + k * P + p] = static_cast<T>(base[j][p] + bit) * t.step_t - T(1);
      }
      w.hat[k * P + p] = h;
      if (t.hash_map) {  // tcnn's grid_index in uint32 arithmetic (functional/hashing.py)
        uint32_t hv = 0;
        for (int64_t j = 0; j < a; ++j) {
          const uint32_t c = static_cast<uint32_t>(base[j][p] + ((k >> j) & 1)) * t.factor[j];
          hv = t.hashed ? (hv ^ c) : (hv + c);
        }
        if (t.mask) hv &= t.mask;  // a power-of-two table (every hashed level): no integer division
        else if (hv >= static_cast<uint32_t>(t.size)) hv %= static_cast<uint32_t>(t.size);
        row = t.offset + static_cast<int64_t>(hv);
      }
      w.idx[k * P + p] = row;
    }
  for (int64_t q = 0; q < Tile<T, K>::KP; ++q) __builtin_prefetch(t.table + w.idx[q] * t.F);  // rows for the gather
  // query encoding z1 and the first linear layer (once per point)
  for (int64_t l = 0; l < L; ++l)
    for (int64_t j = 0; j < a; ++j)
      for (int64_t p = 0; p < P; ++p)
        w.targ[(l * a + j) * P + p] = w.u[j * P + p] * t.gscale[l];
  sincos_array(w.targ, w.z1, w.z1 + La * P, static_cast<int>(La * P));
  {
    // h0 = W0 z1 + b0, four output channels at a time (independent accumulator chains)
    const int64_t D0 = t.D0;
    int64_t c = 0;
    for (; c + 4 <= W; c += 4) {
      T acc[4][P];
      for (int ci = 0; ci < 4; ++ci)
        for (int64_t p = 0; p < P; ++p) acc[ci][p] = t.b0[c + ci];
      for (int64_t q = 0; q < D0; ++q) {
        const T* __restrict zq = w.z1 + q * P;
        for (int ci = 0; ci < 4; ++ci) {
          const T wq = t.W0[(c + ci) * D0 + q];
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) acc[ci][p] += wq * zq[p];
        }
      }
      for (int ci = 0; ci < 4; ++ci)
        for (int64_t p = 0; p < P; ++p) w.h0[(c + ci) * P + p] = acc[ci][p];
    }
    for (; c < W; ++c) {
      T acc[P];
      for (int64_t p = 0; p < P; ++p) acc[p] = t.b0[c];
      for (int64_t q = 0; q < D0; ++q) {
        const T wq = t.W0[c * D0 + q];
        const T* __restrict zq = w.z1 + q * P;
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) acc[p] += wq * zq[p];
      }
      for (int64_t p = 0; p < P; ++p) w.h0[c * P + p] = acc[p];
    }
  }
  // filters: A (point part) -> sincos -> each corner by the angle-sum identity
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < W; ++c) {
      T* __restrict Ar = w.A + (m * W + c) * P;
      const T* om = t.omegaT + (m * W + c) * a;
      const T ps = t.psi[m * W + c];
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) Ar[p] = ps;
      for (int64_t j = 0; j < a; ++j) {
        const T oj = om[j];
        const T* __restrict vbj = w.vb + j * P;
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) Ar[p] += oj * vbj[p];
      }
    }
  sincos_array(w.A, w.sA, w.cA, static_cast<int>(M * W * P));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < W; ++c) {
      const T* __restrict sa = w.sA + (m * W + c) * P;
      const T* __restrict ca = w.cA + (m * W + c) * P;
      T* __restrict fr = w.f + (m * W + c) * KP;
      T* __restrict gr = w.g + (m * W + c) * KP;
      for (int64_t k = 0; k < K; ++k) {
        const T cb = t.cBt[(m * K + k) * W + c], sb = t.sBt[(m * K + k) * W + c];
        if (NeedG) {
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) {
            fr[k * P + p] = sa[p] * cb + ca[p] * sb;
            gr[k * P + p] = ca[p] * cb - sa[p] * sb;
          }
        } else {
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) fr[k * P + p] = sa[p] * cb + ca[p] * sb;
        }
      }
    }
  // the filter chain
  for (int64_t c = 0; c < W; ++c) {
    const T* __restrict h = w.h0 + c * P;
    const T* __restrict fr = w.f + c * KP;
    T* __restrict zr = w.z + c * KP;
    for (int64_t k = 0; k < K; ++k)
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) zr[k * P + p] = h[p] * fr[k * P + p];
  }
  for (int64_t m = 1; m < M; ++m) {
    const T* __restrict Wm = t.Wh + (m - 1) * W * W;
    const T* __restrict zin = w.z + (m - 1) * W * KP;
    for (int64_t c = 0; c < W; ++c) {
      T acc[KP];
      const T bc = t.bh[(m - 1) * W + c];
#pragma omp simd
      for (int64_t q = 0; q < KP; ++q) acc[q] = bc;
      for (int64_t dd = 0; dd < W; ++dd) {
        const T wcd = Wm[c * W + dd];
        const T* __restrict zr = zin + dd * KP;
#pragma omp simd
        for (int64_t q = 0; q < KP; ++q) acc[q] += wcd * zr[q];
      }
      T* __restrict pr = w.pre + (m * W + c) * KP;
      T* __restrict zo = w.z + (m * W + c) * KP;
      const T* __restrict fr = w.f + (m * W + c) * KP;
#pragma omp simd
      for (int64_t q = 0; q < KP; ++q) {
        pr[q] = acc[q];
        zo[q] = acc[q] * fr[q];
      }
    }
  }
  {
    T acc[KP];
#pragma omp simd
    for (int64_t q = 0; q < KP; ++q) acc[q] = t.bout;
    const T* __restrict zl = w.z + (M - 1) * W * KP;
    for (int64_t c = 0; c < W; ++c) {
      const T wc = t.wout[c];
#pragma omp simd
      for (int64_t q = 0; q < KP; ++q) acc[q] += wc * zl[c * KP + q];
    }
    for (int64_t q = 0; q < KP; ++q) w.raw[q] = acc[q];
  }
  // normalisation
  if (t.form == 0) {
    if constexpr (std::is_same_v<T, float>) {  // softplus in T itself (sp into phi, scaled below)
      for (int64_t q = 0; q < KP; ++q) w.rawc[q] = gmin(gmax(w.raw[q], T(-1e4)), T(1e4));
      softplus_array(w.rawc, w.phi, w.sig, static_cast<int>(KP));
    } else {
      for (int64_t q = 0; q < KP; ++q)
        w.rawd[q] = static_cast<double>(gmin(gmax(w.raw[q], T(-1e4)), T(1e4)));
      softplus_array(w.rawd, w.spd, w.sigd, static_cast<int>(KP));
      for (int64_t q = 0; q < KP; ++q) {
        w.phi[q] = static_cast<T>(w.spd[q]);
        w.sig[q] = static_cast<T>(w.sigd[q]);
      }
    }
    for (int64_t p = 0; p < P; ++p) w.S[p] = T(0);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t p = 0; p < P; ++p) {
        const int64_t q = k * P + p;
        const T s = (w.phi[q] + t.floor_) * w.hat[q];
        w.phi[q] = s;
        w.S[p] += s;
      }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t p = 0; p < P; ++p) w.phi[k * P + p] = w.phi[k * P + p] / w.S[p];
  } else {
    for (int64_t p = 0; p < P; ++p) {
      T S = T(0);
      for (int64_t k = 0; k < K; ++k) S += w.raw[k * P + p];
      const bool cl = gabs(S) < t.eps;
      w.S[p] = cl ? (S < T(0) ? -t.eps : t.eps) : S;
      w.clamped[p] = cl;
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t p = 0; p < P; ++p) w.phi[k * P + p] = w.raw[k * P + p] / w.S[p];
  }
}

template <typename T, int K>
GF_INLINE void forward_range(const Term<T>& t, T* __restrict out, int64_t i0, int64_t i1) {
  constexpr int64_t P = Tile<T, K>::P;
  Tile<T, K> w(t);
  const int64_t F = t.F;
  for (int64_t s = i0; s < i1; s += P) {
    const int64_t np = gmin(P, i1 - s);
    tile_forward<T, K, false>(t, w, s, np);
    for (int64_t p = 0; p < np; ++p) {
      T* __restrict o = out + (s + p) * F;
      for (int64_t f = 0; f < F; ++f) o[f] = T(0);
      for (int64_t k = 0; k < K; ++k) {
        const T* __restrict row = t.table + w.idx[k * P + p] * F;
        const T ph = w.phi[k * P + p];
        for (int64_t f = 0; f < F; ++f) o[f] += ph * row[f];
      }
    }
  }
}

// Offsets of the kernel-parameter gradients inside one flat accumulator.
struct GradLayout {
  int64_t W0, b0, Wh, bh, th, psi, wout, bout, total;  // th stored [M][a][W] (transposed at the end)
  GradLayout(int64_t D0, int64_t W, int64_t M, int64_t a) {
    W0 = 0;  // [W][D0]
    b0 = W0 + W * D0;
    Wh = b0 + W;  // [M-1][W][W]
    bh = Wh + (M - 1) * W * W;
    th = bh + (M - 1) * W;
    psi = th + M * a * W;
    wout = psi + M * W;
    bout = wout + W;
    total = bout + 1;
  }
};

// Gradient sums are kept in LANES partial sums per parameter (no horizontal reduction per tile):
// out[l] += sum_{q = l mod LANES} a[q] b[q].
constexpr int64_t LANES = 8;
template <typename T, int64_t N>
GF_INLINE void dot_lanes(const T* __restrict a, const T* __restrict b, T* __restrict out, T scale = T(1)) {
  static_assert(N % LANES == 0, "tile sizes are multiples of LANES");
  T s[LANES];
  for (int64_t l = 0; l < LANES; ++l) s[l] = T(0);
  for (int64_t q0 = 0; q0 < N; q0 += LANES)
#pragma omp simd
    for (int64_t l = 0; l < LANES; ++l) s[l] += a[q0 + l] * b[q0 + l];
#pragma omp simd
  for (int64_t l = 0; l < LANES; ++l) out[l] += scale * s[l];
}
// out[(c Wb + d) LANES + l] += sum_{q = l mod LANES} A[c N + q] B[d N + q] for c < Wa, d < Wb: the weight
// gradient of a Wb -> Wa layer, blocked 2 x 4 so the partial sums stay in registers.
template <typename T, int64_t N>
GF_INLINE void outer_lanes(const T* __restrict A, const T* __restrict B, int64_t Wa, int64_t Wb,
                           T* __restrict out) {
  int64_t c = 0;
  for (; c + 2 <= Wa; c += 2) {
    int64_t d = 0;
    for (; d + 4 <= Wb; d += 4) {
      T s[2][4][LANES];
      for (int ci = 0; ci < 2; ++ci)
        for (int di = 0; di < 4; ++di)
          for (int64_t l = 0; l < LANES; ++l) s[ci][di][l] = T(0);
      for (int64_t q0 = 0; q0 < N; q0 += LANES)
        for (int ci = 0; ci < 2; ++ci)
          for (int di = 0; di < 4; ++di)
#pragma omp simd
            for (int64_t l = 0; l < LANES; ++l)
              s[ci][di][l] += A[(c + ci) * N + q0 + l] * B[(d + di) * N + q0 + l];
      for (int ci = 0; ci < 2; ++ci)
        for (int di = 0; di < 4; ++di)
#pragma omp simd
          for (int64_t l = 0; l < LANES; ++l) out[((c + ci) * Wb + d + di) * LANES + l] += s[ci][di][l];
    }
    for (; d < Wb; ++d) {
      dot_lanes<T, N>(A + c * N, B + d * N, out + (c * Wb + d) * LANES);
      dot_lanes<T, N>(A + (c + 1) * N, B + d * N, out + ((c + 1) * Wb + d) * LANES);
    }
  }
  for (; c < Wa; ++c)
    for (int64_t d = 0; d < Wb; ++d) dot_lanes<T, N>(A + c * N, B + d * N, out + (c * Wb + d) * LANES);
}

template <typename T, int64_t N>
GF_INLINE void sum_lanes(const T* __restrict a, T* __restrict out) {
  T s[LANES];
  for (int64_t l = 0; l < LANES; ++l) s[l] = T(0);
  for (int64_t q0 = 0; q0 < N; q0 += LANES)
#pragma omp simd
    for (int64_t l = 0; l < LANES; ++l) s[l] += a[q0 + l];
#pragma omp simd
  for (int64_t l = 0; l < LANES; ++l) out[l] += s[l];
}

// Backward over points [i0, i1): kernel-parameter gradients into tot (double) and phi/idx stored for the
// table scatter. dval rows of padding lanes are taken as zero.
template <typename T, int K>
GF_INLINE void backward_range(const Term<T>& t, const GradLayout& G, const T* __restrict dval, bool kernel_grad,
                              T* __restrict phi_out, int64_t* __restrict idx_out, double* __restrict tot,
                              int64_t i0, int64_t i1) {
  constexpr int64_t P = Tile<T, K>::P;
  constexpr int64_t KP = Tile<T, K>::KP;
  Tile<T, K> w(t);
  const int64_t W = t.W, M = t.M, F = t.F, a = t.a, D0 = t.D0;
  constexpr int64_t FLUSH = 8;  // tiles per flush of the T sums into the double totals
  std::vector<T> accv(G.total * LANES, T(0));
  T* __restrict acc = accv.data();
  const T hc = t.hc_t;
  int64_t tiles = 0;
  for (int64_t s = i0; s < i1; s += P) {
    const int64_t np = gmin(P, i1 - s);
    tile_forward<T, K, true>(t, w, s, np);
    for (int64_t p = 0; p < np; ++p)
      for (int64_t k = 0; k < K; ++k) {
        phi_out[(s + p) * K + k] = w.phi[k * P + p];
        idx_out[(s + p) * K + k] = w.idx[k * P + p];
      }
    if (!kernel_grad) continue;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t p = 0; p < P; ++p) {
        T v = T(0);
        if (p < np) {
          const T* __restrict dv = dval + (s + p) * F;
          const T* __restrict row = t.table + w.idx[k * P + p] * F;
          for (int64_t f = 0; f < F; ++f) v += dv[f] * row[f];
        }
        w.dphi[k * P + p] = v;
      }
    // normalisation backward -> draw
    if (t.form == 0) {
      T dot[P];
      for (int64_t p = 0; p < P; ++p) dot[p] = T(0);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t p = 0; p < P; ++p) dot[p] += w.dphi[k * P + p] * w.phi[k * P + p];
      for (int64_t k = 0; k < K; ++k)
        for (int64_t p = 0; p < P; ++p) {
          const int64_t q = k * P + p;
          const T ds = (w.dphi[q] - dot[p]) / w.S[p];
          const T rk = w.raw[q];
          const bool pass = (rk >= T(-1e4)) && (rk <= T(1e4));
          w.draw[q] = pass ? ds * w.hat[q] * w.sig[q] : T(0);
        }
    } else {
      T dD[P];
      for (int64_t p = 0; p < P; ++p) dD[p] = T(0);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t p = 0; p < P; ++p) dD[p] -= w.dphi[k * P + p] * w.raw[k * P + p];
      for (int64_t p = 0; p < P; ++p) dD[p] = w.clamped[p] ? T(0) : dD[p] / (w.S[p] * w.S[p]);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t p = 0; p < P; ++p) w.draw[k * P + p] = w.dphi[k * P + p] / w.S[p] + dD[p];
    }
    // output layer
    {
      const T* __restrict zl = w.z + (M - 1) * W * KP;
      for (int64_t c = 0; c < W; ++c) {
        dot_lanes<T, KP>(w.draw, zl + c * KP, acc + (G.wout + c) * LANES);
        const T wc = t.wout[c];
        T* __restrict dzc = w.dz + c * KP;
#pragma omp simd
        for (int64_t q = 0; q < KP; ++q) dzc[q] = w.draw[q] * wc;
      }
      sum_lanes<T, KP>(w.draw, acc + G.bout * LANES);
    }
    // filter layers, last to first
    for (int64_t m = M - 1; m >= 0; --m) {
      for (int64_t c = 0; c < W; ++c) {
        const T* __restrict dzc = w.dz + c * KP;
        const T* __restrict fr = w.f + (m * W + c) * KP;
        const T* __restrict gr = w.g + (m * W + c) * KP;
        T dA[KP];
        if (m > 0) {
          const T* __restrict pr = w.pre + (m * W + c) * KP;
          T* __restrict dpc = w.dp + c * KP;
#pragma omp simd
          for (int64_t q = 0; q < KP; ++q) {
            dA[q] = dzc[q] * pr[q] * gr[q];
            dpc[q] = dzc[q] * fr[q];
          }
          sum_lanes<T, KP>(dpc, acc + (G.bh + (m - 1) * W + c) * LANES);
        } else {
          const T* __restrict h = w.h0 + c * P;
          T* __restrict dh = w.dh0 + c * P;
          for (int64_t p = 0; p < P; ++p) dh[p] = T(0);
          for (int64_t k = 0; k < K; ++k)
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) {
              const int64_t q = k * P + p;
              dA[q] = dzc[q] * h[p] * gr[q];
              dh[p] += dzc[q] * fr[q];
            }
        }
        sum_lanes<T, KP>(dA, acc + (G.psi + m * W + c) * LANES);
        for (int64_t j = 0; j < a; ++j)
          dot_lanes<T, KP>(dA, w.vhat + j * KP, acc + (G.th + (m * a + j) * W + c) * LANES, hc);
      }
      if (m > 0) {
        const T* __restrict Wm = t.Wh + (m - 1) * W * W;
        const T* __restrict zin = w.z + (m - 1) * W * KP;
        T* __restrict gW = acc + (G.Wh + (m - 1) * W * W) * LANES;
        outer_lanes<T, KP>(w.dp, zin, W, W, gW);
        for (int64_t dd = 0; dd < W; ++dd) {
          T accd[KP];
#pragma omp simd
          for (int64_t q = 0; q < KP; ++q) accd[q] = T(0);
          for (int64_t c = 0; c < W; ++c) {
            const T wcd = Wm[c * W + dd];
            const T* __restrict dpc = w.dp + c * KP;
#pragma omp simd
            for (int64_t q = 0; q < KP; ++q) accd[q] += wcd * dpc[q];
          }
          T* __restrict dzd = w.dz + dd * KP;
#pragma omp simd
          for (int64_t q = 0; q < KP; ++q) dzd[q] = accd[q];
        }
      }
    }
    // first linear layer
    for (int64_t c = 0; c < W; ++c) sum_lanes<T, P>(w.dh0 + c * P, acc + (G.b0 + c) * LANES);
    outer_lanes<T, P>(w.dh0, w.z1, W, D0, acc + G.W0 * LANES);
    if (++tiles == FLUSH || s + P >= i1) {
      for (int64_t q = 0; q < G.total; ++q) {
        double sum = 0.0;
        for (int64_t l = 0; l < LANES; ++l) {
          sum += static_cast<double>(acc[q * LANES + l]);
          acc[q * LANES + l] = T(0);
        }
        tot[q] += sum;
      }
      tiles = 0;
    }
  }
}

// Dispatch: on x86-64 the hot loops are compiled for AVX2+FMA only (one copy keeps the first-use build near
// a minute); cpu_supported() tells Python whether this CPU can run them, otherwise it uses the reference.
// Other architectures compile the portable code. The corner count K (2, 4, 8) is a template parameter so
// the tile loops have fixed lengths.
#if defined(__x86_64__) && defined(__GNUC__)
#define GF_HAVE_AVX2 1
template <typename T, int K>
__attribute__((target("avx2,fma"))) void forward_range_avx2(const Term<T>& t, T* out, int64_t i0, int64_t i1) {
  forward_range<T, K>(t, out, i0, i1);
}
template <typename T, int K>
__attribute__((target("avx2,fma"))) void backward_range_avx2(const Term<T>& t, const GradLayout& G, const T* dval,
                                                             bool kg, T* phi, int64_t* idx, double* tot,
                                                             int64_t i0, int64_t i1) {
  backward_range<T, K>(t, G, dval, kg, phi, idx, tot, i0, i1);
}
bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

bool cpu_supported() {
#ifdef GF_HAVE_AVX2
  return cpu_has_avx2();
#else
  return true;
#endif
}
template <typename T, int K>
void forward_range_k(const Term<T>& t, T* out, int64_t i0, int64_t i1) {
#ifdef GF_HAVE_AVX2
  forward_range_avx2<T, K>(t, out, i0, i1);
#else
  forward_range<T, K>(t, out, i0, i1);
#endif
}
template <typename T, int K>
void backward_range_k(const Term<T>& t, const GradLayout& G, const T* dval, bool kg, T* phi, int64_t* idx,
                      double* tot, int64_t i0, int64_t i1) {
#ifdef GF_HAVE_AVX2
  backward_range_avx2<T, K>(t, G, dval, kg, phi, idx, tot, i0, i1);
#else
  backward_range<T, K>(t, G, dval, kg, phi, idx, tot, i0, i1);
#endif
}
template <typename T>
void forward_range_any(const Term<T>& t, T* out, int64_t i0, int64_t i1) {
  if (t.K == 2) return forward_range_k<T, 2>(t, out, i0, i1);
  if (t.K == 4) return forward_range_k<T, 4>(t, out, i0, i1);
  forward_range_k<T, 8>(t, out, i0, i1);
}
template <typename T>
void backward_range_any(const Term<T>& t, const GradLayout& G, const T* dval, bool kg, T* phi, int64_t* idx,
                        double* tot, int64_t i0, int64_t i1) {
  if (t.K == 2) return backward_range_k<T, 2>(t, G, dval, kg, phi, idx, tot, i0, i1);
  if (t.K == 4) return backward_range_k<T, 4>(t, G, dval, kg, phi, idx, tot, i0, i1);
  backward_range_k<T, 8>(t, G, dval, kg, phi, idx, tot, i0, i1);
}

#pragma GCC pop_options

// ------------------------------------------------------------------------------------------------
// Host side: checks, constants, parallel loops
// ------------------------------------------------------------------------------------------------
struct Params {
  torch::Tensor W0, b0, Wh, bh, theta, psi, wout, bout;
};

template <typename T>
void make_term(Term<T>& t, const torch::Tensor& x, const torch::Tensor& table, const std::vector<int64_t>& axes, int64_t r,
                  int64_t offset, int64_t L, int64_t form, double paper_eps, double floor_,
                  const std::vector<double>& hash_level, const Params& P) {
  t.n = x.size(0);
  t.d = x.size(1);
  t.a = static_cast<int64_t>(axes.size());
  TORCH_CHECK(t.a >= 1 && t.a <= 3, "mulfa: 1 to 3 lattice axes, got ", t.a);
  t.K = int64_t(1) << t.a;
  t.F = table.size(1);
  t.L = L;
  t.M = P.theta.size(0);
  t.W = P.theta.size(1);
  t.D0 = 2 * L * t.a;
  TORCH_CHECK(P.theta.size(2) == t.a, "mulfa: theta must be [M, W, a]");
  TORCH_CHECK(P.W0.size(0) == t.W && P.W0.size(1) == t.D0, "mulfa: W0 must be [W, 2 L a]");
  TORCH_CHECK(P.Wh.size(0) == t.M - 1, "mulfa: Wh must be [M - 1, W, W]");
  t.r = r;
  t.offset = offset;
  int64_t st = 1;
  for (int64_t j = 0; j < t.a; ++j) {
    TORCH_CHECK(axes[j] >= 0 && axes[j] < t.d, "mulfa: axis out of range");
    t.axes[j] = axes[j];
    t.stride[j] = st;
    st *= r;
  }
  // hash_level: empty (a clamped dense / plane lattice) or {scale, hashed, size, factor_0 .. factor_{a-1}}
  TORCH_CHECK(hash_level.empty() || static_cast<int64_t>(hash_level.size()) == 3 + t.a,
              "mulfa: hash_level must be empty or {scale, hashed, size, factors...}");
  t.hash_map = !hash_level.empty();
  t.hashed = t.hash_map && hash_level[1] != 0.0;
  t.size = t.hash_map ? static_cast<int64_t>(hash_level[2]) : 0;
  t.mask = t.size > 0 && (t.size & (t.size - 1)) == 0 ? static_cast<uint32_t>(t.size - 1) : 0u;
  for (int64_t j = 0; j < 3; ++j)
    t.factor[j] = t.hash_map && j < t.a ? static_cast<uint32_t>(hash_level[3 + j]) : 0u;
  if (t.hash_map) TORCH_CHECK(t.size >= 1 && hash_level[0] > 0, "mulfa: a hash level needs scale > 0, size >= 1");
  const int64_t rows = t.hash_map ? t.size : st;
  TORCH_CHECK(offset >= 0 && offset + rows <= table.size(0), "mulfa: term rows exceed the table");
  t.form = static_cast<int>(form);
  t.floor_ = static_cast<T>(floor_);
  t.eps = static_cast<T>(paper_eps);
  const double half_cells = t.hash_map ? 0.5 * hash_level[0] : 0.5 * (r - 1);
  t.hc_t = static_cast<T>(half_cells);
  t.step_t = static_cast<T>(1.0 / half_cells);
  t.shift = static_cast<T>(t.hash_map ? 0.5 : 0.0);
  t.step = static_cast<double>(t.step_t);
  t.x = x.data_ptr<T>();
  t.table = table.data_ptr<T>();
  t.W0 = P.W0.data_ptr<T>();
  t.b0 = P.b0.data_ptr<T>();
  t.Wh = P.Wh.data_ptr<T>();
  t.bh = P.bh.data_ptr<T>();
  t.psi = P.psi.data_ptr<T>();
  t.wout = P.wout.data_ptr<T>();
  t.bout = P.bout.data_ptr<T>()[0];
  t.gscale_v.resize(L);
  for (int64_t l = 0; l < L; ++l) t.gscale_v[l] = static_cast<T>(M_PI * static_cast<double>(T(std::ldexp(1.0, l))));
  // Omega in T as the reference (theta * half_cells), then double
  const T hcT = t.hc_t;
  t.omega_v.resize(t.M * t.W * t.a);
  const T* theta = P.theta.data_ptr<T>();
  for (int64_t q = 0; q < t.M * t.W * t.a; ++q) t.omega_v[q] = static_cast<double>(theta[q] * hcT);
  t.cBt_v.resize(t.M * t.K * t.W);
  t.sBt_v.resize(t.M * t.K * t.W);
  for (int64_t m = 0; m < t.M; ++m)
    for (int64_t k = 0; k < t.K; ++k)
      for (int64_t c = 0; c < t.W; ++c) {
        double b = 0;
        for (int64_t j = 0; j < t.a; ++j)
          if ((k >> j) & 1) b += t.omega_v[(m * t.W + c) * t.a + j] * t.step;
        t.cBt_v[(m * t.K + k) * t.W + c] = static_cast<T>(std::cos(b));
        t.sBt_v[(m * t.K + k) * t.W + c] = static_cast<T>(std::sin(b));
      }
  t.gscale = t.gscale_v.data();
  t.omegaT_v.assign(t.omega_v.begin(), t.omega_v.end());
  t.omegaT = t.omegaT_v.data();
  t.cBt = t.cBt_v.data();
  t.sBt = t.sBt_v.data();
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& table, const Params& P) {
  TORCH_CHECK(cpu_supported(), "mulfa: this CPU lacks AVX2/FMA, which the compiled kernel needs");
  TORCH_CHECK(x.device().is_cpu(), "mulfa CPU kernel got a tensor on ", x.device());
  TORCH_CHECK(x.dim() == 2 && table.dim() == 2, "mulfa: x [N, d] and table [rows, F] expected");
  TORCH_CHECK(x.is_contiguous() && table.is_contiguous(), "mulfa: x and table must be contiguous");
  for (const auto* p : {&table, &P.W0, &P.b0, &P.Wh, &P.bh, &P.theta, &P.psi, &P.wout, &P.bout}) {
    TORCH_CHECK(p->dtype() == x.dtype(), "mulfa: all tensors must share x's dtype");
    TORCH_CHECK(p->device().is_cpu() && p->is_contiguous(), "mulfa: CPU contiguous tensors expected");
  }
}

int64_t n_threads() {
#ifdef _OPENMP
  return std::max(1, at::get_num_threads());
#else
  return 1;
#endif
}

// Threads for n points (at least 256 points each), and this thread's share [i0, i1) inside a parallel region.
inline int64_t threads_for(int64_t n) { return std::min<int64_t>(n_threads(), std::max<int64_t>(1, n / 256)); }

struct Share {
  int64_t tid, cnt, i0, i1;
};

inline Share thread_share(int64_t n) {
#ifdef _OPENMP
  const int64_t tid = omp_get_thread_num(), cnt = omp_get_num_threads();
#else
  const int64_t tid = 0, cnt = 1;
#endif
  return {tid, cnt, n * tid / cnt, n * (tid + 1) / cnt};
}

template <typename T>
void run_forward(const Term<T>& t, T* o) {
  const int64_t n = t.n, nt = threads_for(n);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const Share sh = thread_share(n);
    if (sh.i1 > sh.i0) forward_range_any(t, o, sh.i0, sh.i1);
  }
}

torch::Tensor term_forward(torch::Tensor x, torch::Tensor table, std::vector<int64_t> axes, int64_t r,
                           int64_t offset, int64_t L, int64_t form, double paper_eps, double floor_,
                           std::vector<double> hash_level, torch::Tensor W0, torch::Tensor b0, torch::Tensor Wh, torch::Tensor bh,
                           torch::Tensor theta, torch::Tensor psi, torch::Tensor wout, torch::Tensor bout) {
  Params P{W0, b0, Wh, bh, theta, psi, wout, bout};
  check_inputs(x, table, P);
  auto out = torch::empty({x.size(0), table.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mulfa_term_forward", [&] {
    Term<scalar_t> t;
    make_term<scalar_t>(t, x, table, axes, r, offset, L, form, paper_eps, floor_, hash_level, P);
    run_forward(t, out.data_ptr<scalar_t>());
  });
  return out;
}

template <typename T>
void run_backward(const Term<T>& t, const GradLayout& G, const T* dv, bool kernel_grad, T* phip, int64_t* idxp,
                  double* total, T* dt, int64_t rows) {
  const int64_t n = t.n, K = t.K, F = t.F;
  const int64_t nt = threads_for(n);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const Share sh = thread_share(n);
    const int64_t tid = sh.tid, cnt = sh.cnt, i0 = sh.i0, i1 = sh.i1;
    std::vector<double> tot(kernel_grad ? G.total : 0, 0.0);
    if (i1 > i0) backward_range_any(t, G, dv, kernel_grad, phip, idxp, tot.data(), i0, i1);
    if (kernel_grad) {
#pragma omp critical(mulfa_reduce)
      for (int64_t q = 0; q < G.total; ++q) total[q] += tot[q];
    }
#pragma omp barrier
    if (dt != nullptr) {  // table scatter, rows partitioned among threads (no atomics)
      const int64_t r0 = rows * tid / cnt, r1 = rows * (tid + 1) / cnt;
      for (int64_t q = 0; q < n * K; ++q) {
        const int64_t row = idxp[q];
        if (row < r0 || row >= r1) continue;
        const T ph = phip[q];
        const T* d = dv + (q / K) * F;
        T* o = dt + row * F;
        for (int64_t f = 0; f < F; ++f) o[f] += ph * d[f];
      }
    }
  }
}

// Returns [dW0, db0, dWh, dbh, dtheta, dpsi, dwout, dbout] (empty tensors when kernel_grad is false) and adds
// the table gradient into dtable (when given, i.e. defined).
std::vector<torch::Tensor> term_backward(torch::Tensor x, torch::Tensor table, std::vector<int64_t> axes, int64_t r,
                                         int64_t offset, int64_t L, int64_t form, double paper_eps, double floor_,
                                         std::vector<double> hash_level, torch::Tensor W0, torch::Tensor b0, torch::Tensor Wh, torch::Tensor bh,
                                         torch::Tensor theta, torch::Tensor psi, torch::Tensor wout,
                                         torch::Tensor bout, torch::Tensor dval, bool kernel_grad,
                                         std::optional<torch::Tensor> dtable) {
  Params P{W0, b0, Wh, bh, theta, psi, wout, bout};
  check_inputs(x, table, P);
  dval = dval.contiguous();
  TORCH_CHECK(dval.dtype() == x.dtype() && dval.size(0) == x.size(0) && dval.size(1) == table.size(1),
              "mulfa: dval must be [N, F] of x's dtype");
  const bool table_grad = dtable.has_value() && dtable->defined();
  if (table_grad)
    TORCH_CHECK(dtable->is_contiguous() && dtable->sizes() == table.sizes() && dtable->dtype() == x.dtype(),
                "mulfa: dtable must be a contiguous tensor shaped like the table");
  std::vector<torch::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mulfa_term_backward", [&] {
    Term<scalar_t> t;
    make_term<scalar_t>(t, x, table, axes, r, offset, L, form, paper_eps, floor_, hash_level, P);
    const GradLayout G(t.D0, t.W, t.M, t.a);
    const int64_t n = t.n, K = t.K;
    auto phi = torch::empty({n, K}, x.options());
    auto idx = torch::empty({n, K}, x.options().dtype(torch::kInt64));
    scalar_t* phip = phi.data_ptr<scalar_t>();
    int64_t* idxp = idx.data_ptr<int64_t>();
    const scalar_t* dv = dval.data_ptr<scalar_t>();
    std::vector<double> total(kernel_grad ? G.total : 0, 0.0);
    run_backward(t, G, dv, kernel_grad, phip, idxp, total.data(),
                 table_grad ? dtable->data_ptr<scalar_t>() : nullptr, table.size(0));
    if (kernel_grad) {
      const int64_t W = t.W, M = t.M, a = t.a, D0 = t.D0;
      auto opt = x.options().dtype(torch::kFloat64);
      auto flat = torch::from_blob(total.data(), {G.total}, opt).clone();
      auto dW0 = flat.narrow(0, G.W0, W * D0).view({W, D0});
      auto db0 = flat.narrow(0, G.b0, W);
      auto dWh = flat.narrow(0, G.Wh, (M - 1) * W * W).view({M - 1, W, W});
      auto dbh = flat.narrow(0, G.bh, (M - 1) * W).view({M - 1, W});
      auto dth = flat.narrow(0, G.th, M * a * W).view({M, a, W}).transpose(1, 2);
      auto dpsi = flat.narrow(0, G.psi, M * W).view({M, W});
      auto dwout = flat.narrow(0, G.wout, W).view({1, W});
      auto dbout = flat.narrow(0, G.bout, 1);
      for (auto& g : {dW0, db0, dWh, dbh, dth, dpsi, dwout, dbout})
        grads.push_back(g.to(x.scalar_type()).contiguous());
    }
  });
  return grads;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gridfield MulFAGrid fused CPU kernel (one support term per call)";
  m.def("cpu_supported", &cpu_supported, "whether this CPU can run the compiled kernels (AVX2+FMA on x86-64)");
  m.def("term_forward", &term_forward, "val [N, F] of one MulFAGrid support term");
  m.def("term_backward", &term_backward,
        "kernel-parameter gradients of one term (list), table gradient added into dtable");
}
