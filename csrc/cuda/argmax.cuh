// The row argmax of the train-step metrics (train_kernels.cuh) and of argmax_count
// (stats_kernels.cuh), in one place: both headers include it, and the host emulation compiles it
// with them (tests/cuda_emulation).
#pragma once

#include <cstdint>

namespace fastnn {
namespace cuda {

// The first index of the maximum of r[0, C) (C >= 1); a NaN counts as the maximum, so the first
// NaN wins (csrc/cpu/metrics.cpp's row_argmax, numpy.argmax). Comparisons only: exact.
template <class T>
__host__ __device__ __forceinline__ int64_t row_argmax(const T* r, int64_t C) {
  T v = r[0];
  if (v != v) return 0;
  int64_t best = 0;
  for (int64_t j = 1; j < C; ++j) {
    const T x = r[j];
    if (x != x) return j;
    if (x > v) {
      v = x;
      best = j;
    }
  }
  return best;
}

}  // namespace cuda
}  // namespace fastnn
