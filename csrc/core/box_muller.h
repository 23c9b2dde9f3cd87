// The standard normal sample of Gaussian noise, z = sqrt(-2 ln u1) cos(2 pi u2), from two words of
// the Philox stream, written once for the CPU kernel (csrc/cpu/augment.cpp), the CUDA kernel
// (csrc/cuda/augment_kernels.cuh) and its host emulation (tests/cuda_emulation).
//
// No libm: ln and cos are evaluated here with +, -, *, / and sqrt alone, each rounded to nearest
// (IEEE float32, core/rounded.h), so every build gives the same bits: the GPU, every CPU ISA, GCC and clang, glibc
// or any other libm (the manylinux wheel is linked by zig, whose logf/cosf differ from glibc's by
// an ulp in ~2 % of the draws). Include it only from code compiled without multiply-add
// contraction (augment.cpp: -ffp-contract=off; augment.cu: -fmad=false and the __f*_rn spelling).
//
//   u1 = (hi24(w0) + 1) / 2^24 in (0, 1]     u2 = hi24(w1) / 2^24 in [0, 1)
//   ln u1 = e ln 2 + 2 atanh(s), u1 = 2^e m, m in [sqrt(1/2), sqrt(2)), s = (m - 1) / (m + 1)
//   cos(2 pi u2) = +-cos or +-sin of 2 pi r, u2 = q / 4 + r, |r| <= 1/8, the split exact in integers
// Taylor series of atanh (to s^11: |s| <= 0.172) and of cos/sin in r (to r^12 / r^9: |2 pi r| <=
// pi / 4): truncation below 3e-9 relative, so the error is the float32 rounding, within 2 ulp of
// ln and cos each (tests/test_augment_cuda_emulated.py checks every u1 and u2 against float64).
// |z| <= 5.77.
#pragma once

#include <cstdint>
#if !defined(__CUDA_ARCH__)
#include <cstring>
#endif

#include "core/rounded.h"

#if defined(__CUDACC__)
#define FASTNN_BM_HD __host__ __device__ __forceinline__
#else
#define FASTNN_BM_HD inline
#endif

namespace fastnn {
namespace box_muller {

using rn::add_rn;
using rn::div_rn;
using rn::mul_rn;
using rn::sqrt_rn;
using rn::sub_rn;

#if defined(__CUDA_ARCH__)
FASTNN_BM_HD uint32_t bits(float a) { return __float_as_uint(a); }
FASTNN_BM_HD float from_bits(uint32_t b) { return __uint_as_float(b); }
#else
FASTNN_BM_HD uint32_t bits(float a) {
  uint32_t b;
  std::memcpy(&b, &a, sizeof b);
  return b;
}
FASTNN_BM_HD float from_bits(uint32_t b) {
  float a;
  std::memcpy(&a, &b, sizeof a);
  return a;
}
#endif

// ln u for u = k / 2^24, k in [1, 2^24] (a normal float32 in (0, 1]).
FASTNN_BM_HD float ln_unit(float u) {
  const uint32_t b = bits(u);
  // m in [1, 2); above sqrt(2): m / 2, e + 1. Branch-free, so that the CPU loop vectorizes.
  const uint32_t m1 = (b & 0x007FFFFFu) | 0x3F800000u;
  const uint32_t big = m1 > 0x3FB504F3u ? 1u : 0u;
  const uint32_t mb = m1 - (big << 23);
  const int32_t e = static_cast<int32_t>(b >> 23) - 127 + static_cast<int32_t>(big);
  const float f = sub_rn(from_bits(mb), 1.0f);  // exact (Sterbenz)
  const float s = div_rn(f, add_rn(2.0f, f));
  const float z = mul_rn(s, s);
  float p = 0.0909090936f;  // 1/11
  p = add_rn(mul_rn(p, z), 0.111111112f);  // 1/9
  p = add_rn(mul_rn(p, z), 0.142857149f);  // 1/7
  p = add_rn(mul_rn(p, z), 0.200000003f);  // 1/5
  p = add_rn(mul_rn(p, z), 0.333333343f);  // 1/3
  const float s2 = add_rn(s, s);
  const float lm = add_rn(s2, mul_rn(s2, mul_rn(z, p)));  // 2 atanh(s) = 2s + 2s (s^2/3 + s^4/5 + ...)
  // e ln 2 in two parts: ln2_hi has 17 significant bits, so e * ln2_hi is exact for |e| <= 127.
  const float fe = static_cast<float>(e);
  return add_rn(mul_rn(fe, 0.693145751953125f), add_rn(lm, mul_rn(fe, 1.42860677e-06f)));
}

// cos(2 pi k / 2^24) for k in [0, 2^24).
FASTNN_BM_HD float cos_turn24(uint32_t k) {
  const uint32_t q = (k + (1u << 21)) >> 22;  // nearest quarter turn, 0..4
  const int32_t ri = static_cast<int32_t>(k) - static_cast<int32_t>(q << 22);  // |ri| <= 2^21
  const float r = mul_rn(static_cast<float>(ri), 0x1p-24f);  // exact
  const float y = mul_rn(r, r);
  float c = 7.90353632f;  // (2 pi)^12 / 12!
  c = add_rn(mul_rn(c, y), -26.4262562f);  // -(2 pi)^10 / 10!
  c = add_rn(mul_rn(c, y), 60.2446404f);
  c = add_rn(mul_rn(c, y), -85.4568176f);
  c = add_rn(mul_rn(c, y), 64.9393921f);
  c = add_rn(mul_rn(c, y), -19.7392082f);  // -(2 pi)^2 / 2!
  c = add_rn(mul_rn(c, y), 1.0f);
  float s = 42.0586929f;  // (2 pi)^9 / 9!
  s = add_rn(mul_rn(s, y), -76.7058563f);
  s = add_rn(mul_rn(s, y), 81.6052475f);
  s = add_rn(mul_rn(s, y), -41.3417015f);  // -(2 pi)^3 / 3!
  s = add_rn(mul_rn(s, y), 6.28318548f);  // 2 pi
  s = mul_rn(s, r);
  // cos(q pi / 2 + 2 pi r) = cos, -sin, -cos, sin of 2 pi r for q = 0, 1, 2, 3 (q = 4 is 0)
  // (bit selects: branch-free, so that the CPU loop vectorizes)
  const uint32_t odd = 0u - (q & 1u);                 // all ones for q = 1, 3
  const uint32_t neg = ((q + 1u) >> 1 & 1u) << 31;    // the sign bit for q = 1, 2
  return from_bits(((bits(s) & odd) | (bits(c) & ~odd)) ^ neg);
}

// The normal sample of one element from its two stream words.
FASTNN_BM_HD float normal(uint32_t w0, uint32_t w1) {
  const float u1 = mul_rn(static_cast<float>((w0 >> 8) + 1u), 0x1p-24f);
  return mul_rn(sqrt_rn(mul_rn(-2.0f, ln_unit(u1))), cos_turn24(w1 >> 8));
}

}  // namespace box_muller
}  // namespace fastnn

#undef FASTNN_BM_HD
