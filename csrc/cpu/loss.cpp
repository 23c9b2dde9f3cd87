// Loss kernels, float32 and float64, compiled once per ISA (FASTNN_ISA).
//
// Softmax cross-entropy, per row of C logits (x is (rows, C), row-major):
//   pass 1  max_j x_j
//   pass 2  e_j = exp(x_j - max) with our vector exp of a non-positive argument (cpu/vecmath.h),
//           written to grad; s = sum e_j (soft targets also sum t_j and t_j (max - x_j))
//   pass 3  grad_j = e_j * (scale * sum_t / s) - scale * t_j
// so the row stays in L1 between passes and memory sees x read once and grad written once.
// loss_r = (max - x_y) + log s, or sum_j t_j (max - x_j) + sum_t log s: every term is
// non-negative, no cancellation against a large lse. log s = log1p(s - 1), with s - 1 summed apart
// from the max's own exp(0) = 1 (the e_j at the max, one per tie, go to a sum of their own): a
// confident right answer's loss is tiny, and 1 + tiny in a float32 lane kept only its first digit
// or two (float32 [15, 0 x 16]: 2e-2 relative error; float64 [40, 0]: all of it). NaN anywhere in
// a row reaches s, and +inf makes its own e NaN, so the row's loss is NaN (and so is its
// gradient); nothing traps.
// Partial sums are held in T per lane, then added lane by lane in double: a fixed order.
#include "cpu/loss.h"

#include <cmath>
#include <limits>

#include "cpu/simd.h"
#include "cpu/vecmath.h"

namespace fastnn {
namespace FASTNN_ISA_NS {
namespace {

// The lanes [0, cnt) of a tail: a compare on a masked load of ones (1 there, 0 elsewhere).
template <class V>
inline auto tail_mask(int64_t cnt) {
  using T = typename V::T;
  alignas(64) static constexpr T kOnes[16] = {T(1), T(1), T(1), T(1), T(1), T(1), T(1), T(1),
                                              T(1), T(1), T(1), T(1), T(1), T(1), T(1), T(1)};
  return cmp_gt(V::load_partial(kOnes, cnt), V::set1(T(0)));
}

template <class V>
inline double hsum(V a) {
  typename V::T tmp[V::W];
  a.store(tmp);
  double s = 0.0;
  for (int k = 0; k < V::W; ++k) s += static_cast<double>(tmp[k]);
  return s;
}

template <class V>
inline typename V::T hmax(V a) {
  using T = typename V::T;
  T tmp[V::W];
  a.store(tmp);
  T m = tmp[0];
  for (int k = 1; k < V::W; ++k) m = (tmp[k] > m || tmp[k] != tmp[k]) ? tmp[k] : m;
  return m;
}

template <class T>
T row_max(const T* x, int64_t C) {
  using V = Vec<T>;
  const T ninf = -std::numeric_limits<T>::infinity();
  V acc = V::set1(ninf);
  int64_t j = 0;
  for (; j + V::W <= C; j += V::W) acc = vmax(acc, V::load(x + j));
  if (j < C) {
    V xv = V::load_partial(x + j, C - j);
    acc = vmax(acc, select(tail_mask<V>(C - j), xv, V::set1(ninf)));
  }
  return hmax(acc);
}

// Label = int32_t / int64_t for integer labels; kSoft: t holds (rows, C) targets instead.
template <class T, class Label, bool kSoft>
void xent(const T* x, const Label* y, const T* t, T* grad, double* row_loss, int64_t rows, int64_t C, double scale) {
  using V = Vec<T>;
  const V zero = V::set1(T(0)), scale_v = V::set1(static_cast<T>(scale));
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    const T* tr = kSoft ? t + r * C : nullptr;
    T* gr = grad ? grad + r * C : nullptr;
    const T mx = row_max(xr, C);
    const V mxv = V::set1(mx);
    V s_acc = zero, smax_acc = zero, st_acc = zero, stx_acc = zero;  // e_j below the max; at it
    int64_t j = 0;
    // A tail's unused lanes see x = max (a finite exp argument whatever the row holds) and are
    // then zeroed; their t is 0 from the masked load.
    auto body = [&](V xv, V tv, int64_t cnt, bool full) {
      V e;
      if (full) {
        e = vexp_nonpos(xv - mxv);
      } else {
        const auto m = tail_mask<V>(cnt);
        xv = select(m, xv, mxv);
        e = select(m, vexp_nonpos(xv - mxv), zero);
      }
      if (gr) {
        if (full) e.store(gr + j);
        else e.store_partial(gr + j, cnt);
      }
      const auto below = cmp_lt(xv, mxv);  // (tail lanes: x = max, e = 0)
      s_acc = s_acc + select(below, e, zero);
      smax_acc = smax_acc + select(below, zero, e);
      if (kSoft) {
        st_acc = st_acc + tv;
        stx_acc = fmadd(tv, mxv - xv, stx_acc);
      }
    };
    for (; j + V::W <= C; j += V::W) body(V::load(xr + j), kSoft ? V(V::load(tr + j)) : zero, V::W, true);
    if (j < C) {
      const int64_t cnt = C - j;
      body(V::load_partial(xr + j, cnt), kSoft ? V(V::load_partial(tr + j, cnt)) : zero, cnt, false);
    }
    const double s_max = hsum(smax_acc), s_rest = hsum(s_acc);  // s_max: the ties at the max (1 for one)
    const double s = s_max + s_rest;
    const double log_s = std::log1p((s_max - 1.0) + s_rest);
    double st = 1.0;
    if (kSoft) {
      st = hsum(st_acc);
      row_loss[r] = hsum(stx_acc) + st * log_s;
    } else {
      const int64_t label = static_cast<int64_t>(y[r]);
      row_loss[r] = (static_cast<double>(mx) - static_cast<double>(xr[label])) + log_s;
    }
    if (!gr) continue;
    const V f = V::set1(static_cast<T>(scale * st / s));
    j = 0;
    for (; j + V::W <= C; j += V::W) {
      V g = V::load(gr + j) * f;
      if (kSoft) g = fnmadd(V::load(tr + j), scale_v, g);
      g.store(gr + j);
    }
    if (j < C) {
      const int64_t cnt = C - j;
      V g = V::load_partial(gr + j, cnt) * f;
      if (kSoft) g = fnmadd(V::load_partial(tr + j, cnt), scale_v, g);
      g.store_partial(gr + j, cnt);
    }
    if (!kSoft) gr[y[r]] -= static_cast<T>(scale);
  }
}

template <class T>
void xent_i64(const T* x, const int64_t* y, T* grad, double* row_loss, int64_t rows, int64_t C, double scale) {
  xent<T, int64_t, false>(x, y, nullptr, grad, row_loss, rows, C, scale);
}
template <class T>
void xent_i32(const T* x, const int32_t* y, T* grad, double* row_loss, int64_t rows, int64_t C, double scale) {
  xent<T, int32_t, false>(x, y, nullptr, grad, row_loss, rows, C, scale);
}
template <class T>
void xent_soft(const T* x, const T* t, T* grad, double* row_loss, int64_t rows, int64_t C, double scale) {
  xent<T, int64_t, true>(x, nullptr, t, grad, row_loss, rows, C, scale);
}

// sum (p - t)^2 in T lanes over blocks of 64 vectors, each block's lanes added in double.
template <class T>
double squared_error(const T* p, const T* t, T* grad, int64_t n, double scale) {
  using V = Vec<T>;
  constexpr int64_t kBlock = 64 * V::W;
  const V zero = V::set1(T(0)), sc = V::set1(static_cast<T>(scale));
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = b + kBlock < n ? b + kBlock : n;
    V acc = zero;
    int64_t i = b;
    for (; i + V::W <= e; i += V::W) {
      V d = V::load(p + i) - V::load(t + i);
      acc = fmadd(d, d, acc);
      if (grad) (d * sc).store(grad + i);
    }
    if (i < e) {
      V d = V::load_partial(p + i, e - i) - V::load_partial(t + i, e - i);
      acc = fmadd(d, d, acc);
      if (grad) (d * sc).store_partial(grad + i, e - i);
    }
    total += hsum(acc);
  }
  return total;
}

template <class T>
constexpr LossKernelsT<T> make_table() {
  return LossKernelsT<T>{&xent_i64<T>, &xent_i32<T>, &xent_soft<T>, &squared_error<T>};
}

}  // namespace

extern const LossKernels kLossKernels;
constexpr LossKernels kLossKernels{make_table<float>(), make_table<double>()};

}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
