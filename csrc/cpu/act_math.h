// The activation math on one vector, shared by the activation kernels (csrc/cpu/activation.cpp)
// and the GEMM epilogue (csrc/cpu/gemm.cpp). Included only by per-ISA files: everything lives in
// the ISA's namespace.
#pragma once

#include "cpu/activation.h"
#include "cpu/simd.h"
#include "cpu/vecmath.h"

namespace fastnn {
namespace FASTNN_ISA_NS {

// sigmoid(x) = (x < 0 ? e : 1) / (1 + e), e = exp(-|x|): never overflows, and relative accuracy
// holds in both tails (including subnormal results).
template <class V>
inline V sigmoid_v(V x) {
  using T = typename V::T;
  const V one = V::set1(T(1));
  V e = vexp_nonpos(V::set1(T(0)) - vabs(x));
  return V::div_bounded(select(cmp_lt(x, V::set1(T(0))), e, one), one + e);
}

// sigmoid'(x) = e / (1 + e)^2, e = exp(-|x|): no cancellation in 1 - s for large |x|.
template <class V>
inline V sigmoid_grad_v(V x) {
  using T = typename V::T;
  V e = vexp_nonpos(V::set1(T(0)) - vabs(x));
  V d = V::set1(T(1)) + e;
  return V::div_bounded(e, d * d);
}

// tanh(|x|) = -e / (e + 2), e = expm1(-2|x|) in (-1, 0]: accurate near 0 (no 1 - 2/(...)
// cancellation), exactly 1 for large |x|; the sign is copied back so tanh(-0) = -0.
template <class V>
inline V tanh_v(V x) {
  using T = typename V::T;
  V e = vexpm1_nonpos(vabs(x) * V::set1(T(-2)));
  return copysign(V::div_bounded(e, V::set1(T(-2)) - e), x);
}

// tanh'(x) = 1 - tanh^2 = 4e / (1 + e)^2, e = exp(-2|x|).
template <class V>
inline V tanh_grad_v(V x) {
  using T = typename V::T;
  V e = vexp_nonpos(vabs(x) * V::set1(T(-2)));
  V d = V::set1(T(1)) + e;
  return V::div_bounded(V::set1(T(4)) * e, d * d);
}

// A derivative that is NaN wherever x is.
template <class V>
inline V nan_where_x_nan(V d, V x) {
  return select(is_nan(x), x, d);
}

// The forward of activation `op` (an ActKind other than PReLU; identity returns v) on one vector, with its coefficients rounded once to T;
// the same formulas as the activation kernels, so a fused epilogue gives their results.
template <class V>
struct ActForward {
  using T = typename V::T;
  int op;
  V zero, slope, pos, neg;
  ActForward(int op_, const ActParams& p)
      : op(op_), zero(V::set1(T(0))), slope(V::set1(static_cast<T>(p.slope))),
        pos(V::set1(static_cast<T>(p.scale))), neg(V::set1(static_cast<T>(p.scale * p.alpha))) {}
  V operator()(V v) const {
    switch (op) {
      case kActSigmoid: return sigmoid_v(v);
      case kActTanh: return tanh_v(v);
      case kActRelu: return select(cmp_nle(v, zero), v, zero);  // x > 0 or NaN ? x : +0
      case kActLeakyRelu: return select(cmp_gt(v, zero), v, v * slope);
      case kActElu: return select(cmp_gt(v, zero), v * pos, vexpm1_nonpos(vmin(zero, v)) * neg);
      default: return v;
    }
  }
};

}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
