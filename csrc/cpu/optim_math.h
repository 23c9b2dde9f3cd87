// The per-vector arithmetic of the optimizer updates, shared by the update kernels
// (csrc/cpu/optim.cpp) and the weight-gradient GEMM's fused update (csrc/cpu/gemm.cpp), so the two
// give the same bits by construction. Included in per-ISA translation units, after cpu/simd.h and
// inside their FASTNN_ISA_NS namespace. Formulas: csrc/cpu/optim.h.
#pragma once

#include <cmath>

#include "cpu/optim.h"
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

// torch.optim.SGD on one vector: w, and the momentum buffer b (read only when reads_buf(), written
// when writes_buf()); returns the new w.
template <class V>
struct SgdUpdate {
  using T = typename V::T;
  Penalty<V> pen;
  V lr, mom, damp1;
  bool momentum, first, nesterov, undamped;
  explicit SgdUpdate(const SgdArgs& a)
      : pen(a.l2, a.l1), lr(V::set1(static_cast<T>(a.lr))), mom(V::set1(static_cast<T>(a.momentum))),
        damp1(V::set1(static_cast<T>(1.0 - a.dampening))), momentum(a.momentum != 0.0), first(a.first),
        nesterov(a.nesterov), undamped(a.dampening == 0.0) {}
  bool reads_buf() const { return momentum && !first; }
  bool writes_buf() const { return momentum; }
  V operator()(V g, V w, V& b) const {
    if (!momentum) return fnmadd(lr, pen(g, w), w);
    const V gv = pen(g, w);
    if (first) {
      b = gv;
      return fnmadd(lr, nesterov ? V(fmadd(mom, gv, gv)) : gv, w);
    }
    b = fmadd(mom, b, undamped ? gv : V(gv * damp1));
    return fnmadd(lr, nesterov ? V(fmadd(mom, b, gv)) : b, w);
  }
};

// torch.optim.Adam / AdamW on one vector: w, the moments m and v (read and written); returns the
// new w.
template <class V>
struct AdamUpdate {
  using T = typename V::T;
  Penalty<V> pen;
  bool decay;
  V keep, c1, b2, c2, step, bc2, eps;
  explicit AdamUpdate(const AdamArgs& a)
      : pen(a.l2, a.l1), decay(a.decoupled != 0.0), keep(V::set1(static_cast<T>(1.0 - a.lr * a.decoupled))),
        c1(V::set1(static_cast<T>(1.0 - a.beta1))), b2(V::set1(static_cast<T>(a.beta2))),
        c2(V::set1(static_cast<T>(1.0 - a.beta2))), step(V::set1(static_cast<T>(a.step_size))),
        bc2(V::set1(static_cast<T>(a.bc2_sqrt))), eps(V::set1(static_cast<T>(a.eps))) {}
  V operator()(V g, V w, V& m, V& v) const {
    const V gv = pen(g, w);
    if (decay) w = w * keep;
    m = fmadd(c1, gv - m, m);
    v = fmadd(c2, gv * gv, b2 * v);
    const V denom = vsqrt(v) / bc2 + eps;
    return fnmadd(step, m / denom, w);
  }
};

}  // namespace
}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
