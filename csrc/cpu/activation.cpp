// Activation kernels, forward and backward, float32 and float64. Compiled once per ISA
// (FASTNN_ISA); each copy exports a constant table. Semantics follow PyTorch (derivatives at 0:
// relu 0, leaky_relu/prelu the slope, elu/selu scale*alpha), and NaN in x gives NaN out in
// every forward and backward. Backward = grad_output * f'(x), an IEEE product.
#include "cpu/activation.h"

#include "cpu/simd.h"
#include "cpu/act_math.h"
#include "cpu/vecmath.h"

namespace fastnn {
namespace FASTNN_ISA_NS {
namespace {

// Calls step(i, k) over [0, head) in pieces of at most one vector (k <= V::W): the head that
// brings an output to a cache-line boundary is up to 63 bytes, more than one vector on AVX2 (8
// floats) and the baseline (1); one masked store wrote only its first vector (the rest of the
// head was left unwritten).
template <class V, class Step>
inline void for_head(int64_t head, Step step) {
  for (int64_t i = 0; i < head; i += V::W) step(i, head - i < V::W ? head - i : int64_t(V::W));
}

// y[i] = f(x[i]). Each element goes through the same f whatever vector it lands in (tails use
// masked loads/stores), so the result does not depend on alignment or chunking. With `stream`,
// a masked head brings y to a cache-line boundary and the body uses non-temporal stores.
template <class V, class F>
inline void map1(const typename V::T* x, typename V::T* y, int64_t n, bool stream, F f) {
  int64_t i = 0;
  const int64_t head = stream ? head_to_line(y, n) : -1;
  if (head >= 0) {
    for_head<V>(head, [&](int64_t h, int64_t k) { f(V::load_partial(x + h, k)).store_partial(y + h, k); });
    for (i = head; i + V::W <= n; i += V::W) f(V::load(x + i)).store_stream(y + i);
    stream_fence();
  }
  for (; i + V::W <= n; i += V::W) f(V::load(x + i)).store(y + i);
  if (i < n) f(V::load_partial(x + i, n - i)).store_partial(y + i, n - i);
}

// out[i] = f(a[i], b[i]), as map1 but without the closing fence (for callers that run it on
// many rows and fence once).
template <class V, class F>
inline void map2_unfenced(const typename V::T* a, const typename V::T* b, typename V::T* out, int64_t n, bool stream,
                          F f) {
  int64_t i = 0;
  const int64_t head = stream ? head_to_line(out, n) : -1;
  if (head >= 0) {
    for_head<V>(head, [&](int64_t h, int64_t k) {
      f(V::load_partial(a + h, k), V::load_partial(b + h, k)).store_partial(out + h, k);
    });
    for (i = head; i + V::W <= n; i += V::W) f(V::load(a + i), V::load(b + i)).store_stream(out + i);
  }
  for (; i + V::W <= n; i += V::W) f(V::load(a + i), V::load(b + i)).store(out + i);
  if (i < n) f(V::load_partial(a + i, n - i), V::load_partial(b + i, n - i)).store_partial(out + i, n - i);
}

// out[i] = f(a[i], b[i]), as map1.
template <class V, class F>
inline void map2(const typename V::T* a, const typename V::T* b, typename V::T* out, int64_t n, bool stream, F f) {
  map2_unfenced<V>(a, b, out, n, stream, f);
  if (stream) stream_fence();
}

// ---- kernels --------------------------------------------------------------------------------

template <class T>
void sigmoid_fwd(const T* x, T* y, int64_t n, const ActParams& p) {
  map1<Vec<T>>(x, y, n, p.stream, [](Vec<T> v) { return sigmoid_v(v); });
}
template <class T>
void sigmoid_bwd(const T* g, const T* x, T* gx, int64_t n, const ActParams& p) {
  map2<Vec<T>>(g, x, gx, n, p.stream, [](Vec<T> gv, Vec<T> xv) { return gv * sigmoid_grad_v(xv); });
}

template <class T>
void tanh_fwd(const T* x, T* y, int64_t n, const ActParams& p) {
  map1<Vec<T>>(x, y, n, p.stream, [](Vec<T> v) { return tanh_v(v); });
}
template <class T>
void tanh_bwd(const T* g, const T* x, T* gx, int64_t n, const ActParams& p) {
  map2<Vec<T>>(g, x, gx, n, p.stream, [](Vec<T> gv, Vec<T> xv) { return gv * tanh_grad_v(xv); });
}

// relu(x) = x > 0 or NaN ? x : +0.
template <class T>
void relu_fwd(const T* x, T* y, int64_t n, const ActParams& p) {
  using V = Vec<T>;
  const V zero = V::set1(T(0));
  map1<V>(x, y, n, p.stream, [zero](V v) { return select(cmp_nle(v, zero), v, zero); });
}
template <class T>
void relu_bwd(const T* g, const T* x, T* gx, int64_t n, const ActParams& p) {
  using V = Vec<T>;
  const V zero = V::set1(T(0)), one = V::set1(T(1));
  map2<V>(g, x, gx, n, p.stream, [=](V gv, V xv) {
    return gv * nan_where_x_nan(select(cmp_gt(xv, zero), one, zero), xv);
  });
}

template <class T>
void leaky_fwd(const T* x, T* y, int64_t n, const ActParams& p) {
  using V = Vec<T>;
  const V zero = V::set1(T(0)), slope = V::set1(static_cast<T>(p.slope));
  map1<V>(x, y, n, p.stream, [=](V v) { return select(cmp_gt(v, zero), v, v * slope); });
}
template <class T>
void leaky_bwd(const T* g, const T* x, T* gx, int64_t n, const ActParams& p) {
  using V = Vec<T>;
  const V zero = V::set1(T(0)), one = V::set1(T(1)), slope = V::set1(static_cast<T>(p.slope));
  map2<V>(g, x, gx, n, p.stream, [=](V gv, V xv) {
    return gv * nan_where_x_nan(select(cmp_gt(xv, zero), one, slope), xv);
  });
}

// ELU family: y = x > 0 ? scale*x : scale*alpha*expm1(x)  (ELU: scale 1; SELU: its constants).
template <class T>
void elu_fwd(const T* x, T* y, int64_t n, const ActParams& p) {
  using V = Vec<T>;
  const V zero = V::set1(T(0)), pos = V::set1(static_cast<T>(p.scale)),
          neg = V::set1(static_cast<T>(p.scale * p.alpha));
  // expm1 of min(x, 0) (NaN kept: vmin returns its second operand): the x > 0 lanes are
  // selected away, so they need no overflow handling.
  map1<V>(x, y, n, p.stream, [=](V v) { return select(cmp_gt(v, zero), v * pos, vexpm1_nonpos(vmin(zero, v)) * neg); });
}
// f'(x) = x > 0 ? scale : scale*alpha*exp(x); at 0 that is scale*alpha, as in PyTorch.
template <class T>
void elu_bwd(const T* g, const T* x, T* gx, int64_t n, const ActParams& p) {
  using V = Vec<T>;
  const V zero = V::set1(T(0)), pos = V::set1(static_cast<T>(p.scale)),
          neg = V::set1(static_cast<T>(p.scale * p.alpha));
  map2<V>(g, x, gx, n, p.stream,
          [=](V gv, V xv) { return gv * select(cmp_gt(xv, zero), pos, vexp_nonpos(vmin(zero, xv)) * neg); });
}

template <class T>
void copy_fwd(const T* x, T* y, int64_t n, const ActParams& p) {
  map1<Vec<T>>(x, y, n, p.stream, [](Vec<T> v) { return v; });
}

// ---- PReLU with the channel axis contiguous: x is (rows, C) --------------------------------

// x, y are a run of n elements of a (rows, C) array whose first element sits in channel c0.
// wext is the weight repeated to C + 64 elements, so the W weights of any vector are one
// unaligned load at the running channel index, even across a row boundary (or several, C < W).
// The run is streamed like map1 (aligned head, non-temporal body) whatever C is.
// The identity's gradient is grad_output itself: the copy path.
template <class T>
void identity_bwd(const T* g, const T*, T* gx, int64_t n, const ActParams& p) {
  copy_fwd<T>(g, gx, n, p);
}

template <class T>
void prelu_last_fwd(const T* x, const T* wext, T* y, int64_t n, int64_t C, int64_t c0, bool stream) {
  using V = Vec<T>;
  const V zero = V::set1(T(0));
  int64_t c = c0;
  auto advance = [&](int64_t k) {
    c += k;
    while (c >= C) c -= C;
  };
  auto f = [&](V v) { return select(cmp_gt(v, zero), v, v * V::load(wext + c)); };
  int64_t i = 0;
  const int64_t head = stream ? head_to_line(y, n) : -1;
  if (head >= 0) {
    for_head<V>(head, [&](int64_t h, int64_t k) {
      const V v = V::load_partial(x + h, k);
      select(cmp_gt(v, zero), v, v * V::load_partial(wext + c, k)).store_partial(y + h, k);
      advance(k);
    });
    for (i = head; i + V::W <= n; i += V::W, advance(V::W)) f(V::load(x + i)).store_stream(y + i);
    stream_fence();
  }
  for (; i + V::W <= n; i += V::W, advance(V::W)) f(V::load(x + i)).store(y + i);
  if (i < n) {
    V v = V::load_partial(x + i, n - i);
    select(cmp_gt(v, zero), v, v * V::load_partial(wext + c, n - i)).store_partial(y + i, n - i);
  }
}

// Adds the lanes of acc (a partial sum in T over at most kFlushRows rows) to double sums.
template <class V>
inline void flush_to_double(V acc, double* dst, int64_t n) {
  typename V::T tmp[V::W];
  acc.store(tmp);
  for (int64_t i = 0; i < n; ++i) dst[i] += static_cast<double>(tmp[i]);
}

constexpr int64_t kFlushRows = 64;  // rows summed in T before adding to the double accumulators

// gx = gy * (x > 0 ? 1 : w[c]); gw_acc[c] += sum over rows (x > 0 ? 0 : x * gy).
// Rows are walked in order, in panels of up to 16 KiB of columns (the whole row when it fits), so
// memory is read in long sequential runs; the panel's sums build up in T in an L1-resident
// buffer over kFlushRows rows, then go to the double sums. The order depends only on the shape.
template <class T>
void prelu_last_bwd(const T* g, const T* x, const T* w, T* gx, double* gw_acc, int64_t rows, int64_t C,
                    bool stream) {
  using V = Vec<T>;
  constexpr int64_t kPanel = 16384 / sizeof(T);
  const V zero = V::set1(T(0)), one = V::set1(T(1));
  stream = stream && (reinterpret_cast<uintptr_t>(gx) & 63) == 0 && (C * sizeof(T)) % 64 == 0;
  alignas(64) T acc[kPanel];
  for (int64_t c0 = 0; c0 < C; c0 += kPanel) {
    const int64_t width = C - c0 < kPanel ? C - c0 : kPanel;
    const int64_t full = width / V::W * V::W, rest = width - full;
    for (int64_t r0 = 0; r0 < rows; r0 += kFlushRows) {
      const int64_t r1 = r0 + kFlushRows < rows ? r0 + kFlushRows : rows;
      for (int64_t c = 0; c < width; ++c) acc[c] = T(0);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t o = r * C + c0;
        for (int64_t c = 0; c < full; c += V::W) {
          V gv = V::load(g + o + c), xv = V::load(x + o + c);
          auto pos = cmp_gt(xv, zero);
          V out = gv * nan_where_x_nan(select(pos, one, V::load(w + c0 + c)), xv);
          if (stream) out.store_stream(gx + o + c); else out.store(gx + o + c);
          (V::load(acc + c) + select(pos, zero, xv * gv)).store(acc + c);
        }
        if (rest) {
          V gv = V::load_partial(g + o + full, rest), xv = V::load_partial(x + o + full, rest);
          auto pos = cmp_gt(xv, zero);
          (gv * nan_where_x_nan(select(pos, one, V::load_partial(w + c0 + full, rest)), xv)).store_partial(gx + o + full, rest);
          (V::load_partial(acc + full, rest) + select(pos, zero, xv * gv)).store_partial(acc + full, rest);
        }
      }
      for (int64_t c = 0; c < width; ++c) gw_acc[c0 + c] += static_cast<double>(acc[c]);
    }
  }
  if (stream) stream_fence();
}

// sum over one row of (x > 0 ? 0 : x * gy), in double.
template <class T>
double prelu_row_wsum(const T* g, const T* x, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t kBlock = kFlushRows * V::W;
  const V zero = V::set1(T(0));
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = b + kBlock < n ? b + kBlock : n;
    V acc = zero;
    int64_t i = b;
    for (; i + V::W <= e; i += V::W) {
      V xv = V::load(x + i);
      acc = acc + select(cmp_gt(xv, zero), zero, xv * V::load(g + i));
    }
    if (i < e) {
      V xv = V::load_partial(x + i, e - i);
      acc = acc + select(cmp_gt(xv, zero), zero, xv * V::load_partial(g + i, e - i));
    }
    double lanes[V::W] = {};
    flush_to_double(acc, lanes, V::W);
    for (int k = 0; k < V::W; ++k) total += lanes[k];
  }
  return total;
}

template <class T>
constexpr ActivationKernelsT<T> make_table() {
  return ActivationKernelsT<T>{
      // indexed by ActKind; PReLU has its own entries (its weight and channel layout)
      {&copy_fwd<T>, &sigmoid_fwd<T>, &tanh_fwd<T>, &relu_fwd<T>, &leaky_fwd<T>, &elu_fwd<T>, nullptr},
      {&identity_bwd<T>, &sigmoid_bwd<T>, &tanh_bwd<T>, &relu_bwd<T>, &leaky_bwd<T>, &elu_bwd<T>, nullptr},
      &copy_fwd<T>,
      &prelu_last_fwd<T>,
      &prelu_last_bwd<T>,
      &prelu_row_wsum<T>,
  };
}

}  // namespace

extern const ActivationKernels kActivationKernels;
constexpr ActivationKernels kActivationKernels{make_table<float>(), make_table<double>()};

}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
