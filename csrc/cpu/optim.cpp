// Optimizer update kernels, float32 and float64, compiled once per ISA (FASTNN_ISA). Each kernel
// is one pass over a parameter: per element it reads w, g and the state, and writes w and the
// state once (SGD with momentum: 3 reads + 2 writes; Adam: 4 reads + 3 writes). Tails use masked
// loads and stores, so every element goes through the same instructions wherever it falls and the
// result does not depend on how the binding chunks the parameter.
#include "cpu/optim.h"

#include <cmath>

#include "cpu/simd.h"

namespace fastnn {
namespace FASTNN_ISA_NS {
namespace {

template <class T>
inline Vec<T> vsqrt(Vec<T> a);
#if FASTNN_ISA == 2
template <>
inline Vec<float> vsqrt(Vec<float> a) { return {_mm512_sqrt_ps(a.v)}; }
template <>
inline Vec<double> vsqrt(Vec<double> a) { return {_mm512_sqrt_pd(a.v)}; }
#elif FASTNN_ISA == 1
template <>
inline Vec<float> vsqrt(Vec<float> a) { return {_mm256_sqrt_ps(a.v)}; }
template <>
inline Vec<double> vsqrt(Vec<double> a) { return {_mm256_sqrt_pd(a.v)}; }
#else
template <>
inline Vec<float> vsqrt(Vec<float> a) { return std::sqrt(a.v); }
template <>
inline Vec<double> vsqrt(Vec<double> a) { return std::sqrt(a.v); }
#endif

// g + l2 * w + l1 * sign(w), sign(0) = 0: the gradient of l1 |w|_1 + l2/2 |w|^2 added to g.
// The penalty terms are skipped entirely when their coefficient is 0 (unregularized params see
// g itself, as in PyTorch with weight_decay=0).
template <class V>
struct Penalty {
  using T = typename V::T;
  bool has_l2, has_l1;
  V l2, l1, zero;
  Penalty(double l2_, double l1_)
      : has_l2(l2_ != 0.0), has_l1(l1_ != 0.0), l2(V::set1(static_cast<T>(l2_))),
        l1(V::set1(static_cast<T>(l1_))), zero(V::set1(T(0))) {}
  V operator()(V g, V w) const {
    if (has_l2) g = fmadd(l2, w, g);
    if (has_l1) g = g + select(cmp_gt(vabs(w), zero), copysign(l1, w), zero);
    return g;
  }
};

// Runs body(i, count) over [0, n) in full vectors and one masked tail; body loads with
// load_or_partial so the same code serves both.
template <class V>
struct Span {
  int64_t i, cnt;
  bool full() const { return cnt == V::W; }
  V load(const typename V::T* p) const { return full() ? V::load(p + i) : V::load_partial(p + i, cnt); }
  void store(V v, typename V::T* p) const {
    if (full()) v.store(p + i);
    else v.store_partial(p + i, cnt);
  }
};

template <class V, class F>
inline void for_spans(int64_t n, F f) {
  int64_t i = 0;
  for (; i + V::W <= n; i += V::W) f(Span<V>{i, V::W});
  if (i < n) f(Span<V>{i, n - i});
}

// The sum of squares of the values a kernel stores (its updated weights), when asked: squares
// accumulate in one vector of T for 16 vectors (16 terms per lane, so float32 loses at most
// ~16 ulp of the block), then the block's lanes are added in lane order to a double. Masked
// tails store zeros in the dead lanes, which add nothing.
template <class V>
struct SumSq {
  using T = typename V::T;
  static constexpr int kBlock = 16;
  double* out;
  V acc = V::set1(T(0));
  int count = 0;
  double total = 0.0;
  explicit SumSq(double* o) : out(o) {}
  void add(V w) {
    if (!out) return;
    acc = fmadd(w, w, acc);
    if (++count == kBlock) flush();
  }
  void flush() {
    alignas(64) T lanes[V::W];
    acc.store(lanes);
    for (int l = 0; l < V::W; ++l) total += static_cast<double>(lanes[l]);
    acc = V::set1(T(0));
    count = 0;
  }
  ~SumSq() {
    if (!out) return;
    if (count) flush();
    *out = total;
  }
};

// ---- SGD (torch.optim.SGD, dampening and Nesterov included) ----------------------------------
template <class T>
void sgd(T* w, const T* g, T* buf, int64_t n, const SgdArgs& a, double* sumsq) {
  using V = Vec<T>;
  SumSq<V> ss(sumsq);
  const Penalty<V> pen(a.l2, a.l1);
  const V lr = V::set1(static_cast<T>(a.lr)), mom = V::set1(static_cast<T>(a.momentum)),
          damp1 = V::set1(static_cast<T>(1.0 - a.dampening));
  if (a.momentum == 0.0) {
    for_spans<V>(n, [&](Span<V> s) {
      V wv = s.load(w);
      V nw = fnmadd(lr, pen(s.load(g), wv), wv);
      s.store(nw, w);
      ss.add(s.full() ? nw : V::load_partial(w + s.i, s.cnt));
    });
  } else if (a.first) {
    for_spans<V>(n, [&](Span<V> s) {
      V wv = s.load(w);
      V gv = pen(s.load(g), wv);
      s.store(gv, buf);
      V d = a.nesterov ? fmadd(mom, gv, gv) : gv;
      V nw = fnmadd(lr, d, wv);
      s.store(nw, w);
      ss.add(s.full() ? nw : V::load_partial(w + s.i, s.cnt));
    });
  } else {
    const bool undamped = a.dampening == 0.0;
    for_spans<V>(n, [&](Span<V> s) {
      V wv = s.load(w);
      V gv = pen(s.load(g), wv);
      V b = fmadd(mom, s.load(buf), undamped ? gv : gv * damp1);
      s.store(b, buf);
      V d = a.nesterov ? fmadd(mom, b, gv) : b;
      V nw = fnmadd(lr, d, wv);
      s.store(nw, w);
      ss.add(s.full() ? nw : V::load_partial(w + s.i, s.cnt));
    });
  }
}

// ---- Adam / AdamW (torch.optim.Adam / AdamW, non-amsgrad) -------------------------------------
template <class T>
void adam(T* w, const T* g, T* m, T* v, int64_t n, const AdamArgs& a, double* sumsq) {
  using V = Vec<T>;
  SumSq<V> ss(sumsq);
  const Penalty<V> pen(a.l2, a.l1);
  const bool decay = a.decoupled != 0.0;
  const V keep = V::set1(static_cast<T>(1.0 - a.lr * a.decoupled)), c1 = V::set1(static_cast<T>(1.0 - a.beta1)),
          b2 = V::set1(static_cast<T>(a.beta2)), c2 = V::set1(static_cast<T>(1.0 - a.beta2)),
          step = V::set1(static_cast<T>(a.step_size)), bc2 = V::set1(static_cast<T>(a.bc2_sqrt)),
          eps = V::set1(static_cast<T>(a.eps));
  for_spans<V>(n, [&](Span<V> s) {
    V wv = s.load(w);
    V gv = pen(s.load(g), wv);
    if (decay) wv = wv * keep;
    V mv = s.load(m);
    mv = fmadd(c1, gv - mv, mv);
    V vv = fmadd(c2, gv * gv, b2 * s.load(v));
    s.store(mv, m);
    s.store(vv, v);
    V denom = vsqrt(vv) / bc2 + eps;
    V nw = fnmadd(step, mv / denom, wv);
    s.store(nw, w);
    ss.add(s.full() ? nw : V::load_partial(w + s.i, s.cnt));
  });
}

template <class T>
constexpr OptimKernelsT<T> make_table() {
  return OptimKernelsT<T>{&sgd<T>, &adam<T>};
}

}  // namespace

extern const OptimKernels kOptimKernels;
constexpr OptimKernels kOptimKernels{make_table<float>(), make_table<double>()};

}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
