// The activation kernel family: one table per ISA (csrc/cpu/activation.cpp compiled three times).
// Kernels are single-threaded over a contiguous range; csrc/cpu/activation_ops.cpp splits work across
// the pool.
#pragma once

#include <cstdint>

#include "core/activation_kind.h"

namespace fastnn {

// slope: leaky ReLU's negative slope. ELU family: y = scale * (x > 0 ? x : alpha * expm1(x)),
// so ELU is (alpha, 1) and SELU is (SELU alpha, SELU scale); coefficients are formed in double
// and rounded once to the kernel's type.
struct ActParams {
  double slope = 0.01;
  double alpha = 1.0;
  double scale = 1.0;
  // Write the output with non-temporal stores: set by the caller when the arrays are much larger
  // than the last-level cache, where it saves the read-for-ownership of every output line.
  bool stream = false;
};

template <class T>
using ActForwardFn = void (*)(const T* x, T* y, int64_t n, const ActParams& p);
// grad_input = grad_output * f'(x), from the forward *input* x.
template <class T>
using ActBackwardFn = void (*)(const T* gy, const T* x, T* gx, int64_t n, const ActParams& p);

// PReLU with the channel axis contiguous: x, y are n consecutive elements of a (rows, C) array,
// the first in channel c0; wext is the weight repeated to C + kPreluWeightPad elements.
constexpr int64_t kPreluWeightPad = 64;
template <class T>
using PreluLastFwdFn = void (*)(const T* x, const T* wext, T* y, int64_t n, int64_t C, int64_t c0, bool stream);
// gx = gy * (x > 0 ? 1 : w[c]); gw_acc[c] += sum over rows of (x > 0 ? 0 : x * gy), in double.
template <class T>
using PreluLastBwdFn = void (*)(const T* gy, const T* x, const T* w, T* gx, double* gw_acc,
                                int64_t rows, int64_t C, bool stream);
// sum of (x > 0 ? 0 : x * gy) over n elements, in double (PReLU weight gradient of one row).
template <class T>
using PreluRowSumFn = double (*)(const T* gy, const T* x, int64_t n);

template <class T>
struct ActivationKernelsT {
  // Indexed by ActKind (identity: the copy); the kActPrelu entries are null: PReLU goes through
  // the prelu_* entries below.
  ActForwardFn<T> forward[kActCount];
  ActBackwardFn<T> backward[kActCount];
  // y = x with the same loads/stores (and streaming policy) as the activations: the copy
  // ceiling the benchmarks compare against.
  ActForwardFn<T> copy;
  PreluLastFwdFn<T> prelu_last_forward;
  PreluLastBwdFn<T> prelu_last_backward;
  PreluRowSumFn<T> prelu_row_wsum;
};

struct ActivationKernels {
  ActivationKernelsT<float> f32;
  ActivationKernelsT<double> f64;
};

// Defined (constant-initialized, so no ISA-specific code runs before dispatch) by each copy.
namespace baseline { extern const ActivationKernels kActivationKernels; }
namespace avx2 { extern const ActivationKernels kActivationKernels; }
namespace avx512 { extern const ActivationKernels kActivationKernels; }

}  // namespace fastnn
