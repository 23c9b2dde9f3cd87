// exp and expm1 of non-positive arguments on Vec<T>, written once for float and double and every
// ISA (csrc/cpu/simd.h). Every activation needs them only for x <= 0 (sigmoid and the gradients
// via exp(-|x|), tanh via expm1(-2|x|), the ELU family on min(x, 0)), so there is no overflow side.
//
// Method (Cody-Waite reduction + polynomial, no table):
//   n = round(x / ln2), r = x - n*ln2_hi - n*ln2_lo, |r| <= ln2/2
//   p = expm1(r) = r + r^2 q(r): for float q has degree 4, a minimax fit on [-ln2/2, ln2/2]
//   (Lawson's iteration, error of p < 4.3e-9 absolute, 1.8e-8 relative); for double q is the
//   Taylor series to 1/13! (< 1.2e-17 relative).
//   exp(x)   = (1 + p) 2^n, rounded correctly into subnormals (vscalef, or two scaling steps).
//   expm1(x) = fma(p, 2^n, 2^n - 1), which is p exactly for n = 0 (the cancellation-prone range).
// NaN propagates (the clamp uses vmax with the argument second); -inf gives 0 and -1.
// ln2_hi has few significant bits so n*ln2_hi is exact without an FMA (baseline path).
#pragma once

#include "cpu/simd.h"

namespace fastnn {
namespace FASTNN_ISA_NS {

template <class T>
struct ExpConsts;

template <>
struct ExpConsts<float> {
  static constexpr int kQDegree = 4;
  static constexpr float kQ[5] = {0.5f, 0.1666651964187622f, 0.04166620597243309f, 0.008368882350623608f,
                                  0.0013950478751212358f};
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693359375f;       // 355/512
  static constexpr float kLn2Lo = -2.12194440e-4f;    // ln2 - ln2_hi
  static constexpr float kRound = 12582912.0f;        // 1.5 * 2^23: x + k - k rounds to integer
  static constexpr float kExpLo = -104.0f;            // exp(x) < half the least subnormal below
  static constexpr float kExpm1Lo = -30.0f;           // expm1(x) rounds to -1 below
  static constexpr float kScaleLo = -100.0f;          // first of the two exp scale steps: normal
};

template <>
struct ExpConsts<double> {
  static constexpr int kQDegree = 11;
  static constexpr double kQ[12] = {1.0 / 2,        1.0 / 6,         1.0 / 24,          1.0 / 120,
                                    1.0 / 720,      1.0 / 5040,      1.0 / 40320,       1.0 / 362880,
                                    1.0 / 3628800,  1.0 / 39916800,  1.0 / 479001600,   1.0 / 6227020800.0};
  static constexpr double kLog2e = 1.44269504088896338700e+00;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01;  // fdlibm's split
  static constexpr double kLn2Lo = 1.90821492927058770002e-10;
  static constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double kExpLo = -746.0;
  static constexpr double kExpm1Lo = -40.0;
  static constexpr double kScaleLo = -1000.0;
};

// Nearest integer for |x| < 2^22 (float) / 2^51 (double).
template <class V>
inline V round_int(V x) {
  using T = typename V::T;
  const V k = V::set1(ExpConsts<T>::kRound);
  return (x + k) - k;
}

// p = expm1(r) = r + r^2 q(r) for |r| <= ln2/2, q by Horner.
template <class V>
inline V expm1_reduced(V r) {
  using C = ExpConsts<typename V::T>;
  V q = V::set1(C::kQ[C::kQDegree]);
  for (int k = C::kQDegree - 1; k >= 0; --k) q = fmadd(q, r, V::set1(C::kQ[k]));
  return fmadd(r * r, q, r);
}

// (1 + p) * 2^n for integral n in [kExpLo / ln2, 0], rounding correctly into subnormals.
// AVX-512 has one instruction for it (vscalef); elsewhere 2^n is split into 2^n1 (normal) * 2^n2
// with n2 in [-50, 0] (float) / [-76, 0] (double).
template <class V>
inline V scale_pow2(V p, V n) {
#if FASTNN_ISA == 2
  return V::ldexp(p + V::set1(typename V::T(1)), n);
#else
  using C = ExpConsts<typename V::T>;
  V n1 = vmax(V::set1(C::kScaleLo), n);
  V s1 = V::pow2i(n1), s2 = V::pow2i(n - n1);
  return fmadd(p, s1, s1) * s2;
#endif
}

// Reduces x (already clamped) to n and p = expm1(r).
template <class V>
inline void exp_reduce(V x, V* n, V* p) {
  using T = typename V::T;
  using C = ExpConsts<T>;
  V nf = round_int(x * V::set1(C::kLog2e));
  V r = fnmadd(nf, V::set1(C::kLn2Hi), x);
  r = fnmadd(nf, V::set1(C::kLn2Lo), r);
  *n = nf;
  *p = expm1_reduced(r);
}

// exp(x) for x <= 0 or NaN (no overflow side: one clamp fewer). Sigmoid and the gradients use it.
template <class V>
inline V vexp_nonpos(V x) {
  using C = ExpConsts<typename V::T>;
  V xc = vmax(V::set1(C::kExpLo), x);
  V n, p;
  exp_reduce(xc, &n, &p);
  return scale_pow2(p, n);
}

// expm1(x) for x <= 0 or NaN: 2^n is normal (n in [-44, 0] / [-58, 0]), so expm1 = (p + 1) 2^n - 1
// = fma(p, 2^n, 2^n - 1) directly (2^n - 1 is exact). tanh and the ELU family use it.
template <class V>
inline V vexpm1_nonpos(V x) {
  using T = typename V::T;
  using C = ExpConsts<T>;
  V xc = vmax(V::set1(C::kExpm1Lo), x);
  V n, p;
  exp_reduce(xc, &n, &p);
  V s = V::pow2i(n);
  return fmadd(p, s, s - V::set1(T(1)));
}

}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
