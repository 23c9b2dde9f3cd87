// Column statistics and per-column affine maps for preprocessing (csrc/cpu/stats.h), written once
// on the Vec<T> of csrc/cpu/simd.h and compiled per ISA. Vector lanes run along the columns; a
// strip of up to kStrip vectors of columns keeps its accumulators in registers while the rows of
// a block stream past (a 64-row block of a 784-column float32 array is 200 KB: it stays in L2
// from one strip to the next).
#include <cmath>

#include "cpu/simd.h"
#include "cpu/stats.h"

namespace fastnn {
namespace FASTNN_ISA_NS {
namespace {

constexpr int kStrip = 4;  // vectors of columns per register strip

template <class V>
inline bool any_nan_lane(V acc) {
  typename V::T t[V::W];
  acc.store(t);
  bool bad = false;
  for (int k = 0; k < V::W; ++k) bad |= (t[k] != t[k]);
  return bad;
}

// The block's sum of squared deviations, accumulated in double for both dtypes: float32 squares
// underflow below |dev| ~ 1e-19 (a column with std 1e-22 lost up to 90 % of its variance) and
// overflow above ~ 1.8e19; double holds the square of every float32 exactly. A float vector of W
// lanes widens into two double vectors (lo: lanes [0, W/2), hi: [W/2, W)); baseline has one lane.
template <class V>
struct SqSum;

template <>
struct SqSum<Vec<double>> {
  Vec<double> a = Vec<double>::set1(0.0);
  void add(Vec<double> dev) { a = fmadd(dev, dev, a); }
  void store(double* out) const { a.store(out); }
};

template <>
struct SqSum<Vec<float>> {
  using D = Vec<double>;
  D lo = D::set1(0.0), hi = D::set1(0.0);
  void add(Vec<float> dev) {
#if FASTNN_ISA == 2
    const D l{_mm512_cvtps_pd(_mm512_castps512_ps256(dev.v))};
    const D h{_mm512_cvtps_pd(_mm512_extractf32x8_ps(dev.v, 1))};
#elif FASTNN_ISA == 1
    const D l{_mm256_cvtps_pd(_mm256_castps256_ps128(dev.v))};
    const D h{_mm256_cvtps_pd(_mm256_extractf128_ps(dev.v, 1))};
#else
    const D l{static_cast<double>(dev.v)}, h{0.0};
#endif
    lo = fmadd(l, l, lo);
    hi = fmadd(h, h, hi);
  }
  void store(double* out) const {
    lo.store(out);
    if (Vec<float>::W > 1) hi.store(out + Vec<float>::W / 2);
  }
};

// One block of nb rows, the U vectors of columns starting at column j (the last one holding
// `last` valid lanes, W when full). The block's sums of deviations from its first row become
// (mean, M2) in double and are merged into the running (mean, m2) of the na rows before it.
template <class V, int U>
inline void block_strip(const typename V::T* x, int64_t nb, int64_t ldx, int64_t j, int64_t last,
                        const typename V::T* origin, double* mean, double* m2, int64_t na) {
  using T = typename V::T;
  auto load = [&](const T* p, int u) { return (u == U - 1 && last < V::W) ? V::load_partial(p, last) : V::load(p); };
  V c[U], s1[U];
  SqSum<V> s2[U];
  for (int u = 0; u < U; ++u) {
    c[u] = load(x + j + u * V::W, u);
    s1[u] = V::set1(T(0));
  }
  for (int64_t r = 1; r < nb; ++r) {  // row 0 deviates by 0 from itself
    const T* row = x + r * ldx + j;
    for (int u = 0; u < U; ++u) {
      V dev = load(row + u * V::W, u) - c[u];
      s1[u] = s1[u] + dev;
      s2[u].add(dev);
    }
  }
  T tc[U * V::W], t1[U * V::W];
  double t2[U * V::W];
  for (int u = 0; u < U; ++u) {
    c[u].store(tc + u * V::W);
    s1[u].store(t1 + u * V::W);
    s2[u].store(t2 + u * V::W);
  }
  const int64_t width = (U - 1) * V::W + last;
  const double dnb = static_cast<double>(nb), dna = static_cast<double>(na), dn = dna + dnb;
  for (int64_t k = 0; k < width; ++k) {
    const double d1 = static_cast<double>(t1[k]);
    // (c - origin: exact in double for float data; for double data exact when within a factor 2)
    const double bmean = (static_cast<double>(tc[k]) - static_cast<double>(origin[j + k])) + d1 / dnb;
    double bm2 = t2[k] - d1 * d1 / dnb;
    if (bm2 < 0) bm2 = 0;  // rounding only (NaN stays NaN)
    if (na == 0) {
      mean[j + k] = bmean;
      m2[j + k] = bm2;
    } else {  // Chan et al.: merge (na, mean, m2) with (nb, bmean, bm2)
      const double delta = bmean - mean[j + k];
      mean[j + k] += delta * (dnb / dn);
      m2[j + k] += bm2 + delta * delta * (dna * dnb / dn);
    }
  }
}

template <class T>
void col_stats(const T* x, int64_t rows, int64_t d, int64_t ldx, const T* origin, double* mean, double* m2) {
  using V = Vec<T>;
  for (int64_t r0 = 0; r0 < rows; r0 += kStatsBlockRows) {
    const int64_t nb = rows - r0 < kStatsBlockRows ? rows - r0 : kStatsBlockRows;
    const T* xb = x + r0 * ldx;
    int64_t j = 0;
    for (; j + kStrip * V::W <= d; j += kStrip * V::W) block_strip<V, kStrip>(xb, nb, ldx, j, V::W, origin, mean, m2, r0);
    for (; j + V::W <= d; j += V::W) block_strip<V, 1>(xb, nb, ldx, j, V::W, origin, mean, m2, r0);
    if (j < d) block_strip<V, 1>(xb, nb, ldx, j, d - j, origin, mean, m2, r0);
  }
}

// y = (x - shift) * mul over one row of d columns; acc picks up x * 0 (NaN for NaN or inf).
template <class T>
bool center_scale(const T* x, int64_t ldx, T* y, int64_t ldy, int64_t rows, int64_t d, const T* shift,
                  const T* mul, bool stream) {
  using V = Vec<T>;
  const V zero = V::set1(T(0));
  V acc = zero;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * ldx;
    T* yr = y + r * ldy;
    const bool st = stream && d % V::W == 0 && head_to_line(yr, d) == 0;
    int64_t j = 0;
    for (; j + V::W <= d; j += V::W) {
      V v = V::load(xr + j);
      acc = acc + v * zero;
      V out = (v - V::load(shift + j)) * V::load(mul + j);
      if (st) out.store_stream(yr + j); else out.store(yr + j);
    }
    if (j < d) {
      const int64_t n = d - j;
      V v = V::load_partial(xr + j, n);
      acc = acc + v * zero;
      ((v - V::load_partial(shift + j, n)) * V::load_partial(mul + j, n)).store_partial(yr + j, n);
    }
  }
  if (stream) stream_fence();
  return any_nan_lane(acc);
}

template <class T>
void scale_shift(const T* x, int64_t ldx, T* y, int64_t ldy, int64_t rows, int64_t d, const T* mul, const T* add,
                 bool stream) {
  using V = Vec<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * ldx;
    T* yr = y + r * ldy;
    const bool st = stream && d % V::W == 0 && head_to_line(yr, d) == 0;
    int64_t j = 0;
    for (; j + V::W <= d; j += V::W) {
      V out = fmadd(V::load(xr + j), V::load(mul + j), V::load(add + j));
      if (st) out.store_stream(yr + j); else out.store(yr + j);
    }
    if (j < d) {
      const int64_t n = d - j;
      fmadd(V::load_partial(xr + j, n), V::load_partial(mul + j, n), V::load_partial(add + j, n))
          .store_partial(yr + j, n);
    }
  }
  if (stream) stream_fence();
}

template <class T>
int64_t first_nonfinite_row(const T* x, int64_t rows, int64_t d, int64_t ldx) {
  using V = Vec<T>;
  const V zero = V::set1(T(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * ldx;
    V acc = zero;
    int64_t j = 0;
    for (; j + V::W <= d; j += V::W) acc = acc + V::load(xr + j) * zero;
    if (j < d) acc = acc + V::load_partial(xr + j, d - j) * zero;
    if (any_nan_lane(acc)) return r;
  }
  return -1;
}

template <class T>
constexpr StatsKernelsT<T> make_table() {
  return StatsKernelsT<T>{&col_stats<T>, &center_scale<T>, &scale_shift<T>, &first_nonfinite_row<T>};
}

}  // namespace

extern const StatsKernels kStatsKernels;
constexpr StatsKernels kStatsKernels{make_table<float>(), make_table<double>()};

}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
