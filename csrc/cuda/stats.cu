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

template <class T>
void first_nonfinite_impl(const T* x, int64_t n, uint64_t* first) {
  memset_zero(first, sizeof(uint64_t));
  if (n <= 0) return;
  const unsigned grid = launch::grid_for<kThreads>(first_nonfinite_kernel<T>, n);
  first_nonfinite_kernel<T><<<grid, kThreads, 0, launch::stream()>>>(x, n, reinterpret_cast<unsigned long long*>(first));
  launch::check_launch("first_nonfinite launch");
}

template <class T, class L>
void argmax_count_launch(const T* logits, int64_t M, int64_t C, const L* labels, const T* soft, uint64_t* count) {
  const unsigned grid = launch::grid_for<kThreads>(argmax_count_kernel<T, L>, M);
  argmax_count_kernel<T, L><<<grid, kThreads, 0, launch::stream()>>>(logits, M, C, labels, soft,
                                                                    reinterpret_cast<unsigned long long*>(count));
  launch::check_launch("argmax_count launch");
}

template <class T>
void argmax_count_impl(const T* logits, int64_t M, int64_t C, const void* labels, int label_bytes, const T* soft,
                       uint64_t* count) {
  memset_zero(count, sizeof(uint64_t));
  if (M <= 0 || C <= 0) return;
  if (soft != nullptr || label_bytes == 8)
    argmax_count_launch<T, int64_t>(logits, M, C, static_cast<const int64_t*>(labels), soft, count);
  else
    argmax_count_launch<T, int32_t>(logits, M, C, static_cast<const int32_t*>(labels), nullptr, count);
}

template <class U>
void fill_impl(void* p, int64_t n, U v) {
  const unsigned grid = launch::grid_for<kThreads>(fill_kernel<U>, n);
  fill_kernel<U><<<grid, kThreads, 0, launch::stream()>>>(static_cast<U*>(p), n, v);
  launch::check_launch("fill launch");
}

}  // namespace

void first_nonfinite(const float* x, int64_t n, uint64_t* first) { first_nonfinite_impl(x, n, first); }
void first_nonfinite(const double* x, int64_t n, uint64_t* first) { first_nonfinite_impl(x, n, first); }
void argmax_count(const float* logits, int64_t M, int64_t C, const void* labels, int label_bytes, const float* soft,
                  uint64_t* count) {
  argmax_count_impl(logits, M, C, labels, label_bytes, soft, count);
}
void argmax_count(const double* logits, int64_t M, int64_t C, const void* labels, int label_bytes,
                  const double* soft, uint64_t* count) {
  argmax_count_impl(logits, M, C, labels, label_bytes, soft, count);
}
void fill(void* p, int64_t elems, int elem_bytes, uint64_t bits) {
  if (elems <= 0) return;
  switch (elem_bytes) {
    case 1: fill_impl<uint8_t>(p, elems, static_cast<uint8_t>(bits)); break;
    case 2: fill_impl<uint16_t>(p, elems, static_cast<uint16_t>(bits)); break;
    case 4: fill_impl<uint32_t>(p, elems, static_cast<uint32_t>(bits)); break;
    default: fill_impl<uint64_t>(p, elems, bits); break;
  }
}

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
