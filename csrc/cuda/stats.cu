// Column statistics on the GPU (csrc/cuda/stats.h): the kernels of stats_kernels.cuh, two
// launches on the current stream: per-chunk sums into a scratch block, then the fixed-order sum.
#include "cuda/stats.h"

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/cublaslt.h"
#include "cuda/device.h"
#include "cuda/launch.cuh"
#include "cuda/stats_kernels.cuh"

namespace fastnn {
namespace cuda {
namespace {

using namespace stats_detail;

template <class T>
void col_stats_impl(const T* x, int64_t n, int64_t d, int64_t ldx, double* out) {
  if (n <= 0 || d <= 0) return;
  const int64_t rows = chunk_rows_for(n);
  const int64_t chunks = launch::ceil_div(n, rows);
  // (chunks, 2, d) doubles; freed on return, its next user ordered after these kernels (device.h)
  double* part = static_cast<double*>(device_malloc(static_cast<size_t>(chunks * 2 * d) * sizeof(double)));
  try {
    const dim3 grid(static_cast<unsigned>(launch::ceil_div(d, kCols)), static_cast<unsigned>(chunks));
    col_partial_kernel<T><<<grid, kThreads, 0, launch::stream()>>>(x, n, d, ldx, rows, part);
    launch::check_launch("col_stats partial sums launch");
    col_finish_kernel<T><<<static_cast<unsigned>(launch::ceil_div(d, kThreads)), kThreads, 0, launch::stream()>>>(
        x, part, chunks, n, d, out);
    launch::check_launch("col_stats final sum launch");
  } catch (...) {
    device_free(part);
    throw;
  }
  device_free(part);
}

template <class T>
void center_scale_impl(const T* x, int64_t ldx, T* y, int64_t n, int64_t d, const T* shift, const T* mul, int* bad) {
  if (n <= 0 || d <= 0) return;
  const unsigned grid = launch::grid_for<kThreads>(center_scale_kernel<T>, n * d);
  center_scale_kernel<T><<<grid, kThreads, 0, launch::stream()>>>(x, ldx, y, n, d, shift, mul, bad);
  launch::check_launch("center_scale launch");
}

template <class T>
void scale_shift_impl(const T* x, int64_t ldx, T* y, int64_t n, int64_t d, const T* mul, const T* add) {
  if (n <= 0 || d <= 0) return;
  const unsigned grid = launch::grid_for<kThreads>(scale_shift_kernel<T>, n * d);
  scale_shift_kernel<T><<<grid, kThreads, 0, launch::stream()>>>(x, ldx, y, n, d, mul, add);
  launch::check_launch("scale_shift launch");
}

}  // namespace

void center_scale(const float* x, int64_t ldx, float* y, int64_t n, int64_t d, const float* shift, const float* mul,
                  int* bad) {
  center_scale_impl(x, ldx, y, n, d, shift, mul, bad);
}
void center_scale(const double* x, int64_t ldx, double* y, int64_t n, int64_t d, const double* shift,
                  const double* mul, int* bad) {
  center_scale_impl(x, ldx, y, n, d, shift, mul, bad);
}
void scale_shift(const float* x, int64_t ldx, float* y, int64_t n, int64_t d, const float* mul, const float* add) {
  scale_shift_impl(x, ldx, y, n, d, mul, add);
}
void scale_shift(const double* x, int64_t ldx, double* y, int64_t n, int64_t d, const double* mul,
                 const double* add) {
  scale_shift_impl(x, ldx, y, n, d, mul, add);
}

void gram(LDType dt, const void* x, int64_t n, int64_t d, void* g) {
  if (d <= 0) return;
  require_cublaslt();
  // Column-major, cuBLASLt's view: x in memory is X^T (d x n, ld d); D (d x d) = X^T (X^T)^T.
  GemmCall c{dt, /*transa=*/false, /*transb=*/true, d, d, n, x, d, x, d, g, d};
  c.math = kLtMathF32;  // no TF32 whatever the precision setting: a Gram product feeds the whitening
  c.stream = current_stream();
  gemm(c);
}

void col_stats(const float* x, int64_t n, int64_t d, int64_t ldx, double* out) { col_stats_impl(x, n, d, ldx, out); }
void col_stats(const double* x, int64_t n, int64_t d, int64_t ldx, double* out) { col_stats_impl(x, n, d, ldx, out); }

}  // namespace cuda
}  // namespace fastnn
