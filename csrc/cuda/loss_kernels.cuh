// Device code of csrc/cuda/loss.cu: the softmax cross-entropy and squared-error kernels and their
// fixed-order final sum. Plain C++ so that tests/cuda_emulation compiles it for the host and checks
// it against the CPU losses (tests/test_loss_cuda_emulated.py). See loss.cu for the algorithm.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/rounded.h"
#include "cuda/device_math.cuh"
#include "cuda/loss.h"

namespace fastnn {
namespace cuda {
namespace loss_detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunkIters = 16;
constexpr int64_t kChunk = static_cast<int64_t>(kThreads) * kChunkIters;  // squared-error chunk
constexpr unsigned kFull = 0xffffffffu;
constexpr int64_t kNoRow = 0x7fffffffffffffffLL;  // "no bad label" in the min-reduction

// (std::numeric_limits is host-only without --expt-relaxed-constexpr)
__device__ __forceinline__ float neg_inf(float) { return __int_as_float(static_cast<int>(0xff800000u)); }
__device__ __forceinline__ double neg_inf(double) { return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull)); }
__device__ __forceinline__ double quiet_nan() { return __longlong_as_double(0x7ff8000000000000ll); }

using dmath::dexp;
using rn::fma_rn;  // (explicitly rounded arithmetic: core/rounded.h's)
using rn::mul_rn;
using rn::sub_rn;

// max with NaN propagating (the CPU's hmax rule).
template <class T>
__device__ __forceinline__ T nan_max(T m, T v) {
  return (v > m || v != v) ? v : m;
}

#ifdef __CUDACC__
using dmath::warp_sum;
#else
inline double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}
#endif
__device__ __forceinline__ double block_sum(double v) { return dmath::block_sum<kThreads>(v); }
__device__ __forceinline__ int64_t block_min(int64_t v) { return dmath::block_min<kThreads>(v); }

// ------------------------------------------------------------------------------------------------
// GPU kernels

// x, t, grad are (M, C); y is (M,) (Label = int32_t / int64_t) unless kSoft; row_loss is (M,).
// One warp per row r = blockIdx.x * kWarps + warp; a warp past M returns as a whole (no block
// barrier here).
template <class T, class Label, bool kSoft>
__global__ void __launch_bounds__(kThreads) xent_rows_kernel(const T* __restrict__ x, const Label* __restrict__ y,
                                                             const T* __restrict__ t, T* __restrict__ grad,
                                                             double* __restrict__ row_loss, int64_t M, int64_t C,
                                                             double scale) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (r >= M) return;
  const T* xr = x + r * C;
  const T* tr = kSoft ? t + r * C : nullptr;
  T* gr = grad ? grad + r * C : nullptr;

  T mx = neg_inf(T(0));
  for (int64_t j = lane; j < C; j += 32) mx = nan_max(mx, xr[j]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = nan_max(mx, __shfl_xor_sync(kFull, mx, off));

  double s = 0.0, s_max = 0.0, st = 0.0, stx = 0.0;  // the e_j below the max; at it (the CPU's split)
  for (int64_t j = lane; j < C; j += 32) {
    const T xv = xr[j];
    const T e = dexp(sub_rn(xv, mx));
    if (gr) gr[j] = e;
    if (xv < mx) s += static_cast<double>(e);
    else s_max += static_cast<double>(e);
    if (kSoft) {
      const T tv = tr[j];
      st += static_cast<double>(tv);
      stx += static_cast<double>(tv) * (static_cast<double>(mx) - static_cast<double>(xv));
    }
  }
  s = warp_sum(s);
  s_max = warp_sum(s_max);
  if (kSoft) {
    st = warp_sum(st);
    stx = warp_sum(stx);
  }
  const double log_s = log1p((s_max - 1.0) + s);  // (accurate for a tiny loss: see cpu/loss.cpp)
  s = s_max + s;
  int64_t label = -1;
  double loss;
  if (kSoft) {
    loss = stx + st * log_s;
  } else {
    label = static_cast<int64_t>(y[r]);
    if (label < 0 || label >= C) {
      label = -1;  // never an index; the final kernel reports it
      loss = quiet_nan();
    } else {
      loss = (static_cast<double>(mx) - static_cast<double>(xr[label])) + log_s;
    }
  }
  if (lane == 0) row_loss[r] = loss;
  if (!gr) return;
  const T f = static_cast<T>(scale * (kSoft ? st : 1.0) / s);
  const T sc = static_cast<T>(scale);
  for (int64_t j = lane; j < C; j += 32) {
    T gv = mul_rn(gr[j], f);
    if (kSoft) gv = fma_rn(-tr[j], sc, gv);
    else if (j == label) gv = sub_rn(gv, sc);
    gr[j] = gv;
  }
}

// p, t, grad are (n,); partial is (ceil(n / kChunk),): block b sums chunk b. t may be null (p's own
// sum of squares: the optimizers' sumsq).
template <class T>
__global__ void __launch_bounds__(kThreads) squared_error_kernel(const T* __restrict__ p, const T* __restrict__ t,
                                                                 T* __restrict__ grad, int64_t n, T sc,
                                                                 double* __restrict__ partial) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kChunk + threadIdx.x;
  double acc = 0.0;
#pragma unroll 4
  for (int k = 0; k < kChunkIters; ++k) {
    const int64_t i = base + static_cast<int64_t>(k) * kThreads;
    if (i < n) {
      const T d = t ? sub_rn(p[i], t[i]) : p[i];  // (no target: the sum of squares of p)
      const double dd = static_cast<double>(d);
      acc = fma_rn(dd, dd, acc);
      if (grad) grad[i] = mul_rn(d, sc);
    }
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One block: out->value = scale * sum of partial[0, count) in a fixed order; with labels (M of
// them), out->bad_row / bad_label = the first label outside [0, C), or -1 / 0.
template <class Label>
__global__ void __launch_bounds__(kThreads) finalize_kernel(const double* __restrict__ partial, int64_t count,
                                                            double scale, const Label* __restrict__ y, int64_t M,
                                                            int64_t C, LossResult* out) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) acc += partial[i];
  int64_t bad = kNoRow;
  if (y) {
    for (int64_t r = threadIdx.x; r < M; r += kThreads) {
      const int64_t v = static_cast<int64_t>(y[r]);
      if ((v < 0 || v >= C) && r < bad) bad = r;
    }
  }
  acc = block_sum(acc);
  bad = block_min(bad);
  if (threadIdx.x == 0) {
    out->value = acc * scale;
    const bool found = bad != kNoRow;
    out->bad_row = found ? bad : -1;
    out->bad_label = found ? static_cast<int64_t>(y[bad]) : 0;
  }
}

}  // namespace loss_detail
}  // namespace cuda
}  // namespace fastnn
