// Device code of csrc/cuda/train.cu: the batch gather, the device counter and the per-step metrics
// of a graph-captured training step (SPEC12 ops 1-3). Plain C++ so that tests/cuda_emulation
// compiles it for the host (tests/test_train_cuda_emulated.py). Every value that changes from one
// replay of a captured step to the next (batch position, loss) is read from device memory when the
// kernel runs, never passed as a launch argument.
#pragma once

#include <cstdint>

#include "core/rounded.h"
#include "cuda/argmax.cuh"

namespace fastnn {
namespace cuda {
namespace train_detail {

constexpr int kThreads = 256;

// ------------------------------------------------------------------------------------------------
// Gather: dst (n_rows, row_elems) = src[idx[*pos + i], :], src (n_src, row_elems), idx int64.
// U is the element moved as bits (uint32_t: float32 / int32, uint64_t: float64), so every NaN
// payload and every int32 arrives unchanged. A row whose index is outside [0, n_src) is never
// read: it is filled with `fill` (the bits of NaN, or -1), so the loss flags it.
// 2^log2g threads per row (the smallest power of two >= min(row_elems, kThreads), see
// gather_log2g), kThreads >> log2g rows per block, rows grid-strided: a 784-wide row gets a whole
// block, a label (row_elems 1) one thread. Each row's reads and writes are contiguous.
template <class U>
__global__ void __launch_bounds__(kThreads) gather_rows_kernel(const U* __restrict__ src, int64_t n_src,
                                                               int64_t row_elems, const int64_t* __restrict__ idx,
                                                               const uint64_t* __restrict__ pos, int64_t n_rows,
                                                               U* __restrict__ dst, U fill, int log2g) {
  const int64_t group = int64_t{1} << log2g;
  const int64_t lane = static_cast<int64_t>(threadIdx.x) & (group - 1);
  const int64_t per_block = int64_t{kThreads} >> log2g;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * per_block;
  const uint64_t p = *pos;
#pragma unroll 1
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * per_block + (threadIdx.x >> log2g); r < n_rows; r += stride) {
    const int64_t s = idx[p + static_cast<uint64_t>(r)];
    U* d = dst + r * row_elems;
    if (s >= 0 && s < n_src) {
      const U* q = src + s * row_elems;
      for (int64_t c = lane; c < row_elems; c += group) d[c] = q[c];
    } else {
      for (int64_t c = lane; c < row_elems; c += group) d[c] = fill;
    }
  }
}

// log2 of the threads per row of gather_rows_kernel (row_elems >= 1).
inline int gather_log2g(int64_t row_elems) {
  int k = 0;
  while ((int64_t{1} << k) < row_elems && (1 << k) < kThreads) ++k;
  return k;
}

// ------------------------------------------------------------------------------------------------
// Counter: *p += delta (mod 2^64) on a device uint64 (batch position, step counter). One thread.
__global__ void counter_add_kernel(uint64_t* p, uint64_t delta) { *p += delta; }

// ------------------------------------------------------------------------------------------------
// Step metrics.

// Sum of v over the kThreads-wide block (integers: exact in any order); every thread gets it.
__device__ __forceinline__ int64_t block_sum_i64(int64_t v) {
  __shared__ int64_t sh[kThreads];
  sh[threadIdx.x] = v;
  __syncthreads();
#pragma unroll
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  const int64_t r = sh[0];
  __syncthreads();
  return r;
}

enum TargetKind { kLabels = 0, kSoft = 1, kNone = 2 };

// logits (M, C) of T; labels (M,) int32 (Kind kLabels) or soft (M, C) of T (Kind kSoft); loss one
// float64 (the first field of the loss ops' device result); sums float64[4]. One block of
// kThreads: thread t counts the hits of rows t, t + kThreads, ..., then thread 0 updates sums in
// SPEC12's float64 order, each operation explicitly rounded (no contraction into an FMA):
//   sums[0] += loss * M;  sums[1] += hits;  sums[2] += M;  sums[3] = 1 if loss is not finite.
// A label outside [0, C) never equals an argmax: not a hit (as on the CPU).
template <class T, int Kind>
__global__ void __launch_bounds__(kThreads) step_metrics_kernel(const T* __restrict__ logits, int64_t M, int64_t C,
                                                                const int32_t* __restrict__ labels,
                                                                const T* __restrict__ soft,
                                                                const double* __restrict__ loss, double* sums) {
  int64_t hits = 0;
  if (Kind != kNone && C > 0) {
#pragma unroll 1
    for (int64_t r = threadIdx.x; r < M; r += kThreads) {
      const int64_t a = row_argmax(logits + r * C, C);
      const int64_t want = Kind == kLabels ? static_cast<int64_t>(labels[r]) : row_argmax(soft + r * C, C);
      hits += a == want;
    }
    hits = block_sum_i64(hits);
  }
  if (threadIdx.x == 0) {
    const double l = *loss;
    const double m = static_cast<double>(M);
    sums[0] = rn::add_rn(sums[0], rn::mul_rn(l, m));
    sums[1] = rn::add_rn(sums[1], static_cast<double>(hits));
    sums[2] = rn::add_rn(sums[2], m);
    if (!(rn::sub_rn(l, l) == 0.0)) sums[3] = 1.0;  // l - l is NaN exactly when l is +-inf or NaN
  }
}

}  // namespace train_detail
}  // namespace cuda
}  // namespace fastnn
