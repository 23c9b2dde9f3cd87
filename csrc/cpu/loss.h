// Loss kernels (csrc/cpu/loss.cpp, compiled once per ISA): loss and gradient in one call.
// Kernels are single-threaded over a range of rows / elements; csrc/bindings/loss.cpp splits the
// work over fixed blocks (so sums are bit-identical for any thread count) and adds the partial
// losses in block order, in double.
#pragma once

#include <cstdint>

namespace fastnn {

// Softmax cross-entropy of `rows` rows of C logits (row-major, row stride C).
//   lse = max + log(sum_j exp(x_j - max))                       (stable: exp of non-positive args)
//   integer labels: loss_r = lse - x_y;            grad = (softmax(x) - onehot(y)) * scale
//   soft targets t: loss_r = sum_j t_j (lse - x_j); grad = (softmax(x) * sum_j t_j - t) * scale
// row_loss[r] receives loss_r in double; grad may be null (loss only). scale = 1/M for the mean.
// Labels must already be in [0, C) (the binding checks).
template <class T>
struct LossKernelsT {
  void (*xent_i64)(const T* x, const int64_t* y, T* grad, double* row_loss, int64_t rows, int64_t C, double scale);
  void (*xent_i32)(const T* x, const int32_t* y, T* grad, double* row_loss, int64_t rows, int64_t C, double scale);
  void (*xent_soft)(const T* x, const T* t, T* grad, double* row_loss, int64_t rows, int64_t C, double scale);
  // Returns sum (p - t)^2 over n elements, in double; grad (may be null) = scale * (p - t).
  double (*squared_error)(const T* p, const T* t, T* grad, int64_t n, double scale);
};

struct LossKernels {
  LossKernelsT<float> f32;
  LossKernelsT<double> f64;
};

namespace baseline { extern const LossKernels kLossKernels; }
namespace avx2 { extern const LossKernels kLossKernels; }
namespace avx512 { extern const LossKernels kLossKernels; }

}  // namespace fastnn
