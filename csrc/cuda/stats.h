// Column statistics on the GPU: launchers callable from plain C++ (csrc/bindings/cuda_stats.cpp).
// The CPU's col_stats (csrc/cpu/stats.cpp) is the reference; here every sum is in float64 for both
// dtypes (see csrc/cuda/stats_kernels.cuh). Every pointer is device memory aligned to its elements;
// the kernels go to the calling thread's current stream and nothing waits (capturable: the chunk
// scratch comes from the caching device allocator). Throws std::runtime_error if a launch fails.
#pragma once

#include <cstdint>

namespace fastnn {
namespace cuda {

// x (n, d) with row stride ldx >= d elements, n >= 1; out (2, d) float64: the column means, then
// the sums of squared deviations m2 (>= 0). A NaN or inf in a column makes its mean or m2 non-finite.
void col_stats(const float* x, int64_t n, int64_t d, int64_t ldx, double* out);
void col_stats(const double* x, int64_t n, int64_t d, int64_t ldx, double* out);

}  // namespace cuda
}  // namespace fastnn
