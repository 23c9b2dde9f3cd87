// Optimizer update kernels (csrc/cpu/optim.cpp, compiled once per ISA): one fused pass per
// parameter that reads the gradient, adds the penalty gradient, updates the optimizer state and
// steps the weight. The formulas are PyTorch's (torch.optim.SGD / Adam / AdamW, single-tensor
// path), written out in optim.cpp; every scalar is formed in double and rounded once to T.
// Kernels are single-threaded over a contiguous range; csrc/bindings/optim.cpp splits the work.
#pragma once

#include <cstdint>

namespace fastnn {

// g' = g + l2 * w + l1 * sign(w)          (sign(0) = 0; l1 = l2 = 0 for unregularized params)
// momentum == 0:   w -= lr * g'
// momentum != 0:   buf = first ? g' : momentum * buf + (1 - dampening) * g'
//                  d = nesterov ? g' + momentum * buf : buf;   w -= lr * d
struct SgdArgs {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double l2 = 0.0;
  double l1 = 0.0;
  bool nesterov = false;
  bool first = false;  // the momentum buffer is uninitialized: it becomes g' (PyTorch's first step)
};

// g' = g + l2 * w + l1 * sign(w)           (Adam's coupled weight_decay is l2)
// w *= 1 - lr * decoupled                  (AdamW's decoupled weight decay; 0 for Adam)
// m += (1 - beta1) * (g' - m);  v = beta2 * v + (1 - beta2) * g'^2
// w -= step_size * m / (sqrt(v) / bc2_sqrt + eps),  step_size = lr / (1 - beta1^t),
// bc2_sqrt = sqrt(1 - beta2^t)   (t: the 1-based step count; the binding forms both)
struct AdamArgs {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double l2 = 0.0;
  double l1 = 0.0;
  double decoupled = 0.0;
  double step_size = 0.0;
  double bc2_sqrt = 1.0;
};

// With sumsq, a parameter is cut into fixed blocks of this many elements (not the pool's chunks, which
// depend on the thread count), each block's sum taken by one kernel call, and the block sums added in
// order: the same value on any thread count (csrc/bindings/optim.cpp, and the bias update fused into
// the linear backward, csrc/cpu/linear.cpp).
constexpr int64_t kSumsqBlock = 16384;

template <class T>
struct OptimKernelsT {
  // w, g, buf: n elements; buf unused (may be null) when momentum == 0. sumsq: null, or where the
  // sum of the squared updated weights goes (float64, lanes of 16 vectors summed in a fixed order:
  // the same value for the same [0, n) on any ISA of one vector width). The L2 penalty of the next
  // step read off the pass that writes the weights anyway (scikit-learn's loss reports it).
  void (*sgd)(T* w, const T* g, T* buf, int64_t n, const SgdArgs& a, double* sumsq);
  void (*adam)(T* w, const T* g, T* m, T* v, int64_t n, const AdamArgs& a, double* sumsq);
};

struct OptimKernels {
  OptimKernelsT<float> f32;
  OptimKernelsT<double> f64;
};

namespace baseline { extern const OptimKernels kOptimKernels; }
namespace avx2 { extern const OptimKernels kOptimKernels; }
namespace avx512 { extern const OptimKernels kOptimKernels; }

}  // namespace fastnn
