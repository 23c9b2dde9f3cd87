// Column statistics on the GPU: launchers callable from plain C++ (csrc/bindings/cuda_stats.cpp).
// The CPU's col_stats (csrc/cpu/stats.cpp) is the reference; here every sum is in float64 for both
// dtypes (see csrc/cuda/stats_kernels.cuh). Every pointer is device memory aligned to its elements;
// the kernels go to the calling thread's current stream and nothing waits (capturable: the chunk
// scratch comes from the caching device allocator). Throws std::runtime_error if a launch fails.
#pragma once

#include <cstdint>

#include "cuda/linear.h"  // LDType

namespace fastnn {
namespace cuda {

// x (n, d) with row stride ldx >= d elements, n >= 1; out (2, d) float64: the column means, then
// the sums of squared deviations m2 (>= 0). A NaN or inf in a column makes its mean or m2 non-finite.
void col_stats(const float* x, int64_t n, int64_t d, int64_t ldx, double* out);
void col_stats(const double* x, int64_t n, int64_t d, int64_t ldx, double* out);

// y (n, d) C-contiguous = (x - shift) * mul per column (x rows at stride ldx >= d; shift, mul (d,)
// device arrays of x's dtype), the CPU's roundings; y must not overlap x unless it is x (ldx == d).
// *bad (a device int) is set to 1 when x holds a NaN or inf; it is not cleared here.
void center_scale(const float* x, int64_t ldx, float* y, int64_t n, int64_t d, const float* shift, const float* mul,
                  int* bad);
void center_scale(const double* x, int64_t ldx, double* y, int64_t n, int64_t d, const double* shift,
                  const double* mul, int* bad);

// y (n, d) C-contiguous = x * mul + add per column (one FMA, as the CPU); y may be x (ldx == d).
void scale_shift(const float* x, int64_t ldx, float* y, int64_t n, int64_t d, const float* mul, const float* add);
void scale_shift(const double* x, int64_t ldx, double* y, int64_t n, int64_t d, const double* mul,
                 const double* add);

// g (d, d) = x^T x for x (n, d) C-contiguous float32 (dt F32, no TF32) or float64 (F64), with
// cuBLASLt on the current stream (x as the column-major (d, n) matrix it is in memory, times its
// transpose). g is symmetric up to the GEMM's rounding.
void gram(LDType dt, const void* x, int64_t n, int64_t d, void* g);

// The array utilities of the cuda op table, on the current stream. first_nonfinite: *first (a
// device uint64) = 0 when x[0, n) is all finite, else n - (the flat index of the first NaN/inf);
// it is zeroed here first. argmax_count: *count (a device uint64) = the rows of logits (M, C),
// C >= 1, whose argmax equals the target: labels (M,) of label_bytes 4 (int32) or 8 (int64), or
// soft (M, C) of logits' dtype when soft is non-null; zeroed here first. fill: elems elements of
// elem_bytes (1, 2, 4 or 8) at p set to the low elem_bytes bytes of bits.
void first_nonfinite(const float* x, int64_t n, uint64_t* first);
void first_nonfinite(const double* x, int64_t n, uint64_t* first);
void argmax_count(const float* logits, int64_t M, int64_t C, const void* labels, int label_bytes, const float* soft,
                  uint64_t* count);
void argmax_count(const double* logits, int64_t M, int64_t C, const void* labels, int label_bytes,
                  const double* soft, uint64_t* count);
void fill(void* p, int64_t elems, int elem_bytes, uint64_t bits);

}  // namespace cuda
}  // namespace fastnn
