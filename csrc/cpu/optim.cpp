// Optimizer update kernels, float32 and float64, compiled once per ISA (FASTNN_ISA). Each kernel
// is one pass over a parameter: per element it reads w, g and the state, and writes w and the
// state once (SGD with momentum: 3 reads + 2 writes; Adam: 4 reads + 3 writes). Tails use masked
// loads and stores, so every element goes through the same instructions wherever it falls and the
// result does not depend on how the binding chunks the parameter.
#include "cpu/optim.h"

#include "cpu/optim_math.h"
#include "cpu/simd.h"

namespace fastnn {
namespace FASTNN_ISA_NS {
namespace {

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
  const SgdUpdate<V> up(a);
  for_spans<V>(n, [&](Span<V> s) {
    V b = up.reads_buf() ? s.load(buf) : V(V::set1(T(0)));
    const V nw = up(s.load(g), s.load(w), b);
    if (up.writes_buf()) s.store(b, buf);
    s.store(nw, w);
    ss.add(s.full() ? nw : V(V::load_partial(w + s.i, s.cnt)));
  });
}

// ---- Adam / AdamW (torch.optim.Adam / AdamW, non-amsgrad) -------------------------------------
template <class T>
void adam(T* w, const T* g, T* m, T* v, int64_t n, const AdamArgs& a, double* sumsq) {
  using V = Vec<T>;
  SumSq<V> ss(sumsq);
  const AdamUpdate<V> up(a);
  for_spans<V>(n, [&](Span<V> s) {
    V mv = s.load(m), vv = s.load(v);
    const V nw = up(s.load(g), s.load(w), mv, vv);
    s.store(mv, m);
    s.store(vv, v);
    s.store(nw, w);
    ss.add(s.full() ? nw : V(V::load_partial(w + s.i, s.cnt)));
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
