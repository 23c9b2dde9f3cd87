// Device code of csrc/cuda/linear.cu: the elementwise kernels around the cuBLASLt GEMMs (the
// forward epilogue: bias, activation, dropout, saved arrays, relu bits; the backward's Gz; DropConnect;
// the deterministic column sums). Plain C++ apart from the bfloat16 conversions, so that
// tests/cuda_emulation compiles it for the host and checks it against the CPU kernels
// (tests/test_linear_cuda_emulated.py).
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#endif

#include "core/activation_kind.h"
#include "core/philox.h"
#include "cuda/device_math.cuh"

namespace fastnn {
namespace cuda {
namespace linear_detail {

constexpr int kThreads = 256;

// ---- scalar types ----------------------------------------------------------------------------------
// Compute type: float for float32 and bfloat16, double for float64.

template <class T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

__device__ __forceinline__ float to_c(float v) { return v; }
__device__ __forceinline__ double to_c(double v) { return v; }
#ifdef __CUDACC__
__device__ __forceinline__ float to_c(__nv_bfloat16 v) { return __bfloat162float(v); }
#endif

template <class T> __device__ __forceinline__ T from_c(typename Compute<T>::type v) { return static_cast<T>(v); }
#ifdef __CUDACC__
template <> __device__ __forceinline__ __nv_bfloat16 from_c<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
#endif

using dmath::dabs;
using dmath::dexp;
using dmath::dexpm1;
using dmath::dtanh;

// Activation parameters rounded once to the compute type.
template <class C>
struct ActC {
  int act;
  C slope, pos, neg;  // leaky slope; ELU family: x > 0 ? pos * x : neg * expm1(x)
  const void* prelu_w;
  int64_t prelu_size;
};

// The forward of each activation, with csrc/cuda/activation.cu's formulas (NaN stays NaN).
template <class T, class C>
__device__ __forceinline__ C act_fwd(const ActC<C>& p, C z, int64_t col) {
  switch (p.act) {
    case kActSigmoid: {
      const C e = dexp(C(0) - dabs(z));
      return (z < C(0) ? e : C(1)) / (C(1) + e);
    }
    case kActTanh: return dtanh(z);
    case kActRelu: return !(z <= C(0)) ? z : C(0);
    case kActLeakyRelu: return z > C(0) ? z : z * p.slope;
    case kActElu: return z > C(0) ? z * p.pos : dexpm1(z) * p.neg;
    case kActPrelu: {
      const C w = to_c(static_cast<const T*>(p.prelu_w)[p.prelu_size == 1 ? 0 : col]);
      return z > C(0) ? z : z * w;
    }
    default: return z;
  }
}

// ---- the stream, one Philox counter per thread ------------------------------------------------------
// Elements [0, n) at stream positions q0 + i. A unit is one counter: block b = b0 + r, counter c in
// [0, 16); it decides positions 64b + 16j + c (j = 0..3), i.e. elements i = 64r + 16j + c - s with
// s = q0 % 64 (csrc/core/philox.h's layout). A warp covers 2 blocks, 16 consecutive elements per
// half-warp and j. Without dropout the same walk runs with q0 = 0 and no Philox work.
template <bool Drop, class F>
__device__ __forceinline__ void for_each_position(int64_t n, uint64_t seed, uint64_t q0, const uint64_t* rng,
                                                  uint32_t thr, F&& f) {
  if (Drop && rng != nullptr) {  // seed and offset from device memory (graph replay)
    seed = rng[0];
    q0 += rng[1];
  }
  const uint64_t b0 = Drop ? q0 >> 6 : 0;
  const int64_t s = Drop ? static_cast<int64_t>(q0 & 63) : 0;
  const int64_t nunits = ((s + n + 63) >> 6) * 16;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
#pragma unroll 1
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < nunits; u += stride) {
    const int64_t r = u >> 4;
    const int c = static_cast<int>(u & 15);
    uint32_t keep = 0xF;
    if (Drop) {
      const philox::U32x4 w = philox::counter_words((b0 + static_cast<uint64_t>(r)) * 16 + static_cast<uint64_t>(c), seed);
      keep = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) keep |= static_cast<uint32_t>(w.v[j] >= thr) << j;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t i = r * 64 + 16 * j + c - s;
      if (i >= 0 && i < n) f(i, (keep >> j) & 1u);
    }
  }
}

// ---- DropConnect: w_eff = w * (keep(q0 + j) ? scale : 0) over n elements ----------------------------
template <class T>
__global__ void __launch_bounds__(kThreads)
    drop_scale_kernel(const T* w, T* out, int64_t n, uint64_t seed, uint64_t q0, const uint64_t* rng, uint32_t thr,
                      typename Compute<T>::type scale) {
  using C = typename Compute<T>::type;
  for_each_position<true>(n, seed, q0, rng, thr, [&](int64_t i, uint32_t keep) {
    out[i] = from_c<T>(to_c(w[i]) * (keep ? scale : C(0)));
  });
}

// ---- the forward epilogue ------------------------------------------------------------------------------
// y[i] = act(src[i] + bias[col]) * (keep(q0 + i) ? scale : 0) over y (M, N); i = row * N + col.
// bias null: none (cuBLASLt added it). save (when not null) gets z = src + bias (save_pre) or the
// activation output. mask (fallback path only, zeroed by the caller) gets the relu bits of z > 0.
// y may be src; save may be src (each element is read, then written, by one thread).
template <class T, class C>
struct EpiArgs {
  const T* src;
  T* y;
  T* save;
  bool save_pre;
  uint32_t* mask;
  int64_t mask_words;  // 32-bit words per row of y
  const T* bias;
  int64_t M, N;
  ActC<C> act;
  uint64_t seed, q0;
  const uint64_t* rng;  // device seed/offset (LinearRandom::rng_dev) or null
  uint32_t thr;
  C scale;
};

template <class T, bool Drop>
__global__ void __launch_bounds__(kThreads) epilogue_kernel(EpiArgs<T, typename Compute<T>::type> a) {
  using C = typename Compute<T>::type;
  const int64_t n = a.M * a.N;
  for_each_position<Drop>(n, a.seed, a.q0, a.rng, a.thr, [&](int64_t i, uint32_t keep) {
    const int64_t row = i / a.N, col = i - row * a.N;
    C z = to_c(a.src[i]);
    if (a.bias != nullptr) z += to_c(a.bias[col]);
    const C v = act_fwd<T, C>(a.act, z, col);
    if (a.save != nullptr) a.save[i] = from_c<T>(a.save_pre ? z : v);
    if (a.mask != nullptr && z > C(0))
      atomicOr(a.mask + row * a.mask_words + (col >> 5), 1u << (col & 31));
    a.y[i] = from_c<T>(Drop ? v * (keep ? a.scale : C(0)) : v);
  });
}

// ---- the backward's Gz -----------------------------------------------------------------------------------
// gz[i] = (g[i] * (keep ? scale : 0)) * act'(.), act' from the saved array (output or pre-activation)
// or the relu mask. NaN in the pre-activation gives NaN (as the activation kernels' backward).
template <class T, class C>
struct GradArgs {
  const T* g;
  const T* saved;
  const uint32_t* mask;
  int64_t mask_words;
  T* gz;
  int64_t M, N;
  ActC<C> act;
  uint64_t seed, q0;
  const uint64_t* rng;
  uint32_t thr;
  C scale;
};

template <class T, bool Drop>
__global__ void __launch_bounds__(kThreads) grad_kernel(GradArgs<T, typename Compute<T>::type> a) {
  using C = typename Compute<T>::type;
  const int64_t n = a.M * a.N;
  for_each_position<Drop>(n, a.seed, a.q0, a.rng, a.thr, [&](int64_t i, uint32_t keep) {
    const int64_t row = i / a.N, col = i - row * a.N;
    C gd = to_c(a.g[i]);
    if (Drop) gd = gd * (keep ? a.scale : C(0));
    C d = C(1);
    switch (a.act.act) {
      case kActRelu:
        d = ((a.mask[row * a.mask_words + (col >> 5)] >> (col & 31)) & 1u) ? C(1) : C(0);
        break;
      case kActSigmoid: {
        const C s = to_c(a.saved[i]);
        d = s * (C(1) - s);
        break;
      }
      case kActTanh: {
        const C t = to_c(a.saved[i]);
        d = C(1) - t * t;
        break;
      }
      case kActLeakyRelu: {
        const C z = to_c(a.saved[i]);
        d = isnan(z) ? z : (z > C(0) ? C(1) : a.act.slope);
        break;
      }
      case kActElu: {
        const C z = to_c(a.saved[i]);
        d = z > C(0) ? a.act.pos : dexp(z) * a.act.neg;
        break;
      }
      case kActPrelu: {
        const C z = to_c(a.saved[i]);
        const C w = to_c(static_cast<const T*>(a.act.prelu_w)[a.act.prelu_size == 1 ? 0 : col]);
        d = isnan(z) ? z : (z > C(0) ? C(1) : w);
        break;
      }
      default: break;
    }
    a.gz[i] = from_c<T>(gd * d);
  });
}

// ---- column sums, in double, in an order fixed by the shape ------------------------------------------
// Mode kSumPlain: sum over rows of a[row, col] (the bias gradient when BGRADB is not available).
// Mode kSumPrelu: sum over rows of (z > 0 ? 0 : z * gd), gd = g * (keep(q0 + i) ? scale : 0) (the
// PReLU weight gradient; the keep bits are regenerated per element).
// partial[chunk, col] for row chunks of kRowsPerChunk rows; then colsum_finish adds the chunks in
// order (and, for a shared PReLU weight, all columns with a fixed tree).
constexpr int64_t kRowsPerChunk = 256;
enum SumMode : int { kSumPlain = 0, kSumPrelu = 1 };

template <class T, int Mode>
__global__ void __launch_bounds__(kThreads)
    colsum_partial_kernel(const T* a, const T* g, int64_t M, int64_t N, bool drop, uint64_t seed, uint64_t q0,
                          const uint64_t* rng, uint32_t thr, double scale, double* partial) {
  if (drop && rng != nullptr) {
    seed = rng[0];
    q0 += rng[1];
  }
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (col >= N) return;
  const int64_t r0 = chunk * kRowsPerChunk, r1 = M < r0 + kRowsPerChunk ? M : r0 + kRowsPerChunk;
  double s = 0.0;
#pragma unroll 1
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = r * N + col;
    if (Mode == kSumPlain) {
      s += static_cast<double>(to_c(a[i]));
    } else {
      const double z = static_cast<double>(to_c(a[i]));
      if (!(z > 0.0)) {
        double gd = static_cast<double>(to_c(g[i]));
        if (drop) gd = gd * (philox::bits_at(seed, q0 + static_cast<uint64_t>(i)) >= thr ? scale : 0.0);
        s += z * gd;
      }
    }
  }
  partial[chunk * N + col] = s;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    colsum_finish_kernel(const double* partial, int64_t chunks, int64_t N, bool all, T* out) {
  if (!all) {
    const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (col >= N) return;
    double s = 0.0;
    for (int64_t k = 0; k < chunks; ++k) s += partial[k * N + col];
    out[col] = from_c<T>(static_cast<typename Compute<T>::type>(s));
    return;
  }
  // One block: thread t adds entries t, t + 256, ... in order, then a fixed tree.
  __shared__ double sh[kThreads];
  const int t = threadIdx.x;
  double s = 0.0;
  for (int64_t e = t; e < chunks * N; e += kThreads) s += partial[e];
  sh[t] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (t < w) sh[t] += sh[t + w];
    __syncthreads();
  }
  if (t == 0) out[0] = from_c<T>(static_cast<typename Compute<T>::type>(sh[0]));
}

}  // namespace linear_detail
}  // namespace cuda
}  // namespace fastnn
