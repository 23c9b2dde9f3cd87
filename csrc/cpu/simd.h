// A thin vector type per ISA so that each kernel's math is written once (csrc/cpu/vecmath.h,
// csrc/cpu/activation.cpp) and compiled per ISA. FASTNN_ISA selects the width:
//   0 baseline: one lane (plain scalar code; any CPU, any architecture)
//   1 avx2:     256-bit, AVX2 + FMA
//   2 avx512:   512-bit, AVX-512 F/BW/DQ/VL
// Everything here lives in the ISA's own namespace: no inline function compiled with one ISA's
// flags can be merged by the linker into another copy.
//
// Conventions: vmax(a, b) / vmin(a, b) follow x86 maxps/minps: when either is NaN the result is
// b; callers put the value that must propagate NaN second. select(m, a, b) = m ? a : b.
// Tails use masked loads and stores (no scalar loop), so every element of an array goes through
// the same instructions wherever it falls: results do not depend on how the array is chunked.
#pragma once

#include <cstdint>

#ifndef FASTNN_ISA
#error "FASTNN_ISA must be defined (0 baseline, 1 avx2, 2 avx512)"
#endif

#if FASTNN_ISA == 2
#define FASTNN_ISA_NS avx512
#include <immintrin.h>
#elif FASTNN_ISA == 1
#define FASTNN_ISA_NS avx2
#include <immintrin.h>
#else
#define FASTNN_ISA_NS baseline
#endif

namespace fastnn {
namespace FASTNN_ISA_NS {

template <class T>
struct Vec;

// Elements before p reaches a 64-byte boundary (0 if p is not even element-aligned).
template <class T>
inline int64_t head_to_line(const T* p, int64_t n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a % sizeof(T)) return -1;
  int64_t h = static_cast<int64_t>(((64 - (a & 63)) & 63) / sizeof(T));
  return h < n ? h : n;
}

// Orders non-temporal stores before whatever the caller does next.
inline void stream_fence() {
#if FASTNN_ISA >= 1
  _mm_sfence();
#endif
}

#if FASTNN_ISA == 2
// ------------------------------------------------------------------------------------ AVX-512
template <>
struct Vec<float> {
  using T = float;
  using Mask = __mmask16;
  static constexpr int W = 16;
  __m512 v;
  static Vec set1(float a) { return {_mm512_set1_ps(a)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Mask tail(int64_t n) { return static_cast<Mask>((1u << n) - 1u); }
  static Vec load_partial(const float* p, int64_t n) { return {_mm512_maskz_loadu_ps(tail(n), p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store_partial(float* p, int64_t n) const { _mm512_mask_storeu_ps(p, tail(n), v); }
  void store_stream(float* p) const { _mm512_stream_ps(p, v); }  // p 64-byte aligned
  // a * 2^n, n integral in [-300, 300]: one vscalefps, correctly rounded into subnormals/inf.
  static Vec ldexp(Vec a, Vec n) { return {_mm512_scalef_ps(a.v, n.v)}; }
  static Mask mask_from_bits(uint32_t bits) { return static_cast<Mask>(bits); }  // lane i = bit i
  // a / b for finite b with 1 <= |b| <= 4: rcp14 + one Newton step + one residual correction
  // (within 1 ULP of the quotient), cheaper than vdivps.
  static Vec div_bounded(Vec a, Vec b) {
    __m512 y = _mm512_rcp14_ps(b.v);
    y = _mm512_fmadd_ps(_mm512_fnmadd_ps(b.v, y, _mm512_set1_ps(1.0f)), y, y);
    __m512 q = _mm512_mul_ps(a.v, y);
    return {_mm512_fmadd_ps(_mm512_fnmadd_ps(b.v, q, a.v), y, q)};
  }
  // 2^n for integral n in [-126, 127]: n + (2^23 + 127) puts the biased exponent in the low
  // mantissa bits; shifting them into the exponent field drops the rest.
  static Vec pow2i(Vec n) {
    __m512 t = _mm512_add_ps(n.v, _mm512_set1_ps(8388608.0f + 127.0f));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(t), 23))};
  }
};
template <>
struct Vec<double> {
  using T = double;
  using Mask = __mmask8;
  static constexpr int W = 8;
  __m512d v;
  static Vec set1(double a) { return {_mm512_set1_pd(a)}; }
  static Vec load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static Mask tail(int64_t n) { return static_cast<Mask>((1u << n) - 1u); }
  static Vec load_partial(const double* p, int64_t n) { return {_mm512_maskz_loadu_pd(tail(n), p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void store_partial(double* p, int64_t n) const { _mm512_mask_storeu_pd(p, tail(n), v); }
  void store_stream(double* p) const { _mm512_stream_pd(p, v); }
  static Vec ldexp(Vec a, Vec n) { return {_mm512_scalef_pd(a.v, n.v)}; }
  static Mask mask_from_bits(uint32_t bits) { return static_cast<Mask>(bits); }
  static Vec div_bounded(Vec a, Vec b) { return {_mm512_div_pd(a.v, b.v)}; }
  // 2^n for integral n in [-1022, 1023].
  static Vec pow2i(Vec n) {
    __m512d t = _mm512_add_pd(n.v, _mm512_set1_pd(4503599627370496.0 + 1023.0));
    return {_mm512_castsi512_pd(_mm512_slli_epi64(_mm512_castpd_si512(t), 52))};
  }
};
#define FASTNN_BINOP(T, V, op, fn) \
  inline Vec<T> operator op(Vec<T> a, Vec<T> b) { return {fn(a.v, b.v)}; }
#define FASTNN_VEC_OPS(T, S)                                                                   \
  FASTNN_BINOP(T, V, +, _mm512_add_##S)                                                        \
  FASTNN_BINOP(T, V, -, _mm512_sub_##S)                                                        \
  FASTNN_BINOP(T, V, *, _mm512_mul_##S)                                                        \
  FASTNN_BINOP(T, V, /, _mm512_div_##S)                                                        \
  inline Vec<T> fmadd(Vec<T> a, Vec<T> b, Vec<T> c) { return {_mm512_fmadd_##S(a.v, b.v, c.v)}; } \
  inline Vec<T> fnmadd(Vec<T> a, Vec<T> b, Vec<T> c) { return {_mm512_fnmadd_##S(a.v, b.v, c.v)}; } \
  inline Vec<T> vmax(Vec<T> a, Vec<T> b) { return {_mm512_max_##S(a.v, b.v)}; }               \
  inline Vec<T> vmin(Vec<T> a, Vec<T> b) { return {_mm512_min_##S(a.v, b.v)}; }               \
  inline Vec<T>::Mask cmp_gt(Vec<T> a, Vec<T> b) { return _mm512_cmp_##S##_mask(a.v, b.v, _CMP_GT_OQ); } \
  inline Vec<T>::Mask cmp_lt(Vec<T> a, Vec<T> b) { return _mm512_cmp_##S##_mask(a.v, b.v, _CMP_LT_OQ); } \
  /* !(a <= b): true for a > b and for NaN */                                                  \
  inline Vec<T>::Mask cmp_nle(Vec<T> a, Vec<T> b) { return _mm512_cmp_##S##_mask(a.v, b.v, _CMP_NLE_UQ); } \
  inline Vec<T>::Mask is_nan(Vec<T> a) { return _mm512_cmp_##S##_mask(a.v, a.v, _CMP_UNORD_Q); } \
  inline Vec<T> select(Vec<T>::Mask m, Vec<T> a, Vec<T> b) { return {_mm512_mask_blend_##S(m, b.v, a.v)}; } \
  inline Vec<T> vabs(Vec<T> a) { return {_mm512_abs_##S(a.v)}; }                             \
  /* magnitude of a with the sign of b */                                                      \
  inline Vec<T> copysign(Vec<T> a, Vec<T> b) {                                                 \
    const Vec<T> sign = Vec<T>::set1(T(-0.0));                                                 \
    return {_mm512_or_##S(_mm512_andnot_##S(sign.v, a.v), _mm512_and_##S(sign.v, b.v))};       \
  }
FASTNN_VEC_OPS(float, ps)
FASTNN_VEC_OPS(double, pd)
#undef FASTNN_VEC_OPS
#undef FASTNN_BINOP
// Lane i of a mask -> bit i.
inline uint32_t to_bits(__mmask16 m) { return m; }
inline uint32_t to_bits(__mmask8 m) { return m; }

#elif FASTNN_ISA == 1
// ------------------------------------------------------------------------------------ AVX2
template <>
struct Vec<float> {
  using T = float;
  using Mask = __m256;
  static constexpr int W = 8;
  __m256 v;
  static Vec set1(float a) { return {_mm256_set1_ps(a)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static __m256i tail(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Vec load_partial(const float* p, int64_t n) { return {_mm256_maskload_ps(p, tail(n))}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  // Plain 128/64/32-bit stores, not vmaskmovps: AMD's Zen cores run a masked store as a slow
  // microcoded sequence (measured on Zen 3: 60 % of the transposing B pack's time sat on it).
  void store_partial(float* p, int64_t n) const {
    if (n >= 8) return _mm256_storeu_ps(p, v);
    __m128 x = _mm256_castps256_ps128(v);
    if (n >= 4) {
      _mm_storeu_ps(p, x);
      x = _mm256_extractf128_ps(v, 1);
      p += 4;
      n -= 4;
    }
    if (n >= 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), x);
      x = _mm_movehl_ps(x, x);
      p += 2;
      n -= 2;
    }
    if (n >= 1) _mm_store_ss(p, x);
  }
  void store_stream(float* p) const { _mm256_stream_ps(p, v); }  // p 32-byte aligned
  static Mask mask_from_bits(uint32_t bits) {
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256i b = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), sel);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, sel));
  }
  static Vec div_bounded(Vec a, Vec b) {  // as the AVX-512 one, from a 12-bit estimate
    __m256 y = _mm256_rcp_ps(b.v);
    y = _mm256_fmadd_ps(_mm256_fnmadd_ps(b.v, y, _mm256_set1_ps(1.0f)), y, y);
    __m256 q = _mm256_mul_ps(a.v, y);
    return {_mm256_fmadd_ps(_mm256_fnmadd_ps(b.v, q, a.v), y, q)};
  }
  static Vec pow2i(Vec n) {
    __m256 t = _mm256_add_ps(n.v, _mm256_set1_ps(8388608.0f + 127.0f));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23))};
  }
};
template <>
struct Vec<double> {
  using T = double;
  using Mask = __m256d;
  static constexpr int W = 4;
  __m256d v;
  static Vec set1(double a) { return {_mm256_set1_pd(a)}; }
  static Vec load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static __m256i tail(int64_t n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)); }
  static Vec load_partial(const double* p, int64_t n) { return {_mm256_maskload_pd(p, tail(n))}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  void store_partial(double* p, int64_t n) const {  // plain stores, as Vec<float>'s
    if (n >= 4) return _mm256_storeu_pd(p, v);
    __m128d x = _mm256_castpd256_pd128(v);
    if (n >= 2) {
      _mm_storeu_pd(p, x);
      x = _mm256_extractf128_pd(v, 1);
      p += 2;
      n -= 2;
    }
    if (n >= 1) _mm_store_sd(p, x);
  }
  void store_stream(double* p) const { _mm256_stream_pd(p, v); }
  static Vec div_bounded(Vec a, Vec b) { return {_mm256_div_pd(a.v, b.v)}; }
  static Mask mask_from_bits(uint32_t bits) {
    const __m256i sel = _mm256_setr_epi64x(1, 2, 4, 8);
    __m256i b = _mm256_and_si256(_mm256_set1_epi64x(static_cast<long long>(bits)), sel);
    return _mm256_castsi256_pd(_mm256_cmpeq_epi64(b, sel));
  }
  static Vec pow2i(Vec n) {
    __m256d t = _mm256_add_pd(n.v, _mm256_set1_pd(4503599627370496.0 + 1023.0));
    return {_mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(t), 52))};
  }
};
#define FASTNN_BINOP(T, op, fn) \
  inline Vec<T> operator op(Vec<T> a, Vec<T> b) { return {fn(a.v, b.v)}; }
#define FASTNN_VEC_OPS(T, S)                                                                   \
  FASTNN_BINOP(T, +, _mm256_add_##S)                                                           \
  FASTNN_BINOP(T, -, _mm256_sub_##S)                                                           \
  FASTNN_BINOP(T, *, _mm256_mul_##S)                                                           \
  FASTNN_BINOP(T, /, _mm256_div_##S)                                                           \
  inline Vec<T> fmadd(Vec<T> a, Vec<T> b, Vec<T> c) { return {_mm256_fmadd_##S(a.v, b.v, c.v)}; } \
  inline Vec<T> fnmadd(Vec<T> a, Vec<T> b, Vec<T> c) { return {_mm256_fnmadd_##S(a.v, b.v, c.v)}; } \
  inline Vec<T> vmax(Vec<T> a, Vec<T> b) { return {_mm256_max_##S(a.v, b.v)}; }               \
  inline Vec<T> vmin(Vec<T> a, Vec<T> b) { return {_mm256_min_##S(a.v, b.v)}; }               \
  inline Vec<T>::Mask cmp_gt(Vec<T> a, Vec<T> b) { return _mm256_cmp_##S(a.v, b.v, _CMP_GT_OQ); } \
  inline Vec<T>::Mask cmp_lt(Vec<T> a, Vec<T> b) { return _mm256_cmp_##S(a.v, b.v, _CMP_LT_OQ); } \
  inline Vec<T>::Mask cmp_nle(Vec<T> a, Vec<T> b) { return _mm256_cmp_##S(a.v, b.v, _CMP_NLE_UQ); } \
  inline Vec<T>::Mask is_nan(Vec<T> a) { return _mm256_cmp_##S(a.v, a.v, _CMP_UNORD_Q); }    \
  inline Vec<T> select(Vec<T>::Mask m, Vec<T> a, Vec<T> b) { return {_mm256_blendv_##S(b.v, a.v, m)}; } \
  inline Vec<T> vabs(Vec<T> a) { return {_mm256_andnot_##S(_mm256_set1_##S(T(-0.0)), a.v)}; } \
  inline Vec<T> copysign(Vec<T> a, Vec<T> b) {                                                 \
    const auto sign = _mm256_set1_##S(T(-0.0));                                               \
    return {_mm256_or_##S(_mm256_andnot_##S(sign, a.v), _mm256_and_##S(sign, b.v))};           \
  }
FASTNN_VEC_OPS(float, ps)
FASTNN_VEC_OPS(double, pd)
#undef FASTNN_VEC_OPS
#undef FASTNN_BINOP
inline uint32_t to_bits(__m256 m) { return static_cast<uint32_t>(_mm256_movemask_ps(m)); }
inline uint32_t to_bits(__m256d m) { return static_cast<uint32_t>(_mm256_movemask_pd(m)); }

#else
// ------------------------------------------------------------------------------------ baseline
template <class U, class I>
inline I bit_cast_to(U u) {
  I i;
  __builtin_memcpy(&i, &u, sizeof(i));
  return i;
}

template <class TT, class I, int kMant, int kBias>
struct ScalarVec {
  using T = TT;
  using Mask = bool;
  static constexpr int W = 1;
  T v;
  static ScalarVec set1(T a) { return {a}; }
  static ScalarVec load(const T* p) { return {*p}; }
  static ScalarVec load_partial(const T* p, int64_t) { return {*p}; }
  void store(T* p) const { *p = v; }
  void store_partial(T* p, int64_t) const { *p = v; }
  void store_stream(T* p) const { *p = v; }
  static ScalarVec div_bounded(ScalarVec a, ScalarVec b) { return {a.v / b.v}; }
  static bool mask_from_bits(uint32_t bits) { return bits & 1u; }
  static ScalarVec pow2i(ScalarVec n) {
    T t = n.v + (T(I(1) << kMant) + T(kBias));
    return {bit_cast_to<I, T>(bit_cast_to<T, I>(t) << kMant)};
  }
};
template <>
struct Vec<float> : ScalarVec<float, uint32_t, 23, 127> {
  Vec(float a = 0) : ScalarVec{a} {}
  Vec(ScalarVec s) : ScalarVec(s) {}
};
template <>
struct Vec<double> : ScalarVec<double, uint64_t, 52, 1023> {
  Vec(double a = 0) : ScalarVec{a} {}
  Vec(ScalarVec s) : ScalarVec(s) {}
};
#define FASTNN_VEC_OPS(T, I)                                                                  \
  inline Vec<T> operator+(Vec<T> a, Vec<T> b) { return a.v + b.v; }                            \
  inline Vec<T> operator-(Vec<T> a, Vec<T> b) { return a.v - b.v; }                            \
  inline Vec<T> operator*(Vec<T> a, Vec<T> b) { return a.v * b.v; }                            \
  inline Vec<T> operator/(Vec<T> a, Vec<T> b) { return a.v / b.v; }                            \
  inline Vec<T> fmadd(Vec<T> a, Vec<T> b, Vec<T> c) { return a.v * b.v + c.v; }                \
  inline Vec<T> fnmadd(Vec<T> a, Vec<T> b, Vec<T> c) { return c.v - a.v * b.v; }               \
  inline Vec<T> vmax(Vec<T> a, Vec<T> b) { return a.v > b.v ? a.v : b.v; }                     \
  inline Vec<T> vmin(Vec<T> a, Vec<T> b) { return a.v < b.v ? a.v : b.v; }                     \
  inline bool cmp_gt(Vec<T> a, Vec<T> b) { return a.v > b.v; }                                 \
  inline bool cmp_lt(Vec<T> a, Vec<T> b) { return a.v < b.v; }                                 \
  inline bool cmp_nle(Vec<T> a, Vec<T> b) { return !(a.v <= b.v); }                            \
  inline bool is_nan(Vec<T> a) { return a.v != a.v; }                                          \
  inline Vec<T> select(bool m, Vec<T> a, Vec<T> b) { return m ? a : b; }                       \
  inline Vec<T> vabs(Vec<T> a) {                                                               \
    return bit_cast_to<I, T>(bit_cast_to<T, I>(a.v) & ~(I(1) << (sizeof(I) * 8 - 1)));        \
  }                                                                                            \
  inline Vec<T> copysign(Vec<T> a, Vec<T> b) {                                                 \
    const I sign = I(1) << (sizeof(I) * 8 - 1);                                                \
    return bit_cast_to<I, T>((bit_cast_to<T, I>(a.v) & ~sign) | (bit_cast_to<T, I>(b.v) & sign)); \
  }
FASTNN_VEC_OPS(float, uint32_t)
FASTNN_VEC_OPS(double, uint64_t)
#undef FASTNN_VEC_OPS
inline uint32_t to_bits(bool m) { return m ? 1u : 0u; }
#endif

}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
