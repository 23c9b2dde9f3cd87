// The CPU GEMM family: one table per ISA (csrc/cpu/gemm.cpp compiled three times).
//   C (M x N) = epilogue(A (M x K) . B (K x N))
// A and B are read through (row stride, column stride) in elements, so a C- or F-contiguous
// operand (or its transpose) is used as it lies, never copy-transposed. C is row-major with row
// stride ldc. The kernel threads itself over the project pool; each C tile is computed the same
// way whatever the thread count (K is never split), so results are bit-identical for any count.
#pragma once

#include <cstdint>

#include "cpu/activation.h"

namespace fastnn {

// Applied to each C tile while it is still in registers, after the last K block:
//   c = act(a.b + bias[j])   (bias: N elements, or null; act: an Act, or -1 for none)
template <class T>
struct GemmEpilogue {
  const T* bias = nullptr;
  int act = -1;
  ActParams params;
};

template <class T>
using GemmFn = void (*)(int64_t M, int64_t N, int64_t K, const T* a, int64_t rsa, int64_t csa, const T* b,
                        int64_t rsb, int64_t csb, T* c, int64_t ldc, const GemmEpilogue<T>& ep);

template <class T>
struct GemmKernelsT {
  GemmFn<T> gemm;
  int mr, nr;  // the micro-tile, for tests and benchmarks to report
};

struct GemmKernels {
  GemmKernelsT<float> f32;
  GemmKernelsT<double> f64;
};

namespace baseline { extern const GemmKernels kGemmKernels; }
namespace avx2 { extern const GemmKernels kGemmKernels; }
namespace avx512 { extern const GemmKernels kGemmKernels; }

}  // namespace fastnn
