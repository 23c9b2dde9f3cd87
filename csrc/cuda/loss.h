// Losses on the GPU: launchers callable from plain C++ (csrc/bindings/cuda_optim.cpp). The same
// formulas as csrc/cpu/loss.h (softmax cross-entropy with integer labels or soft targets, squared
// error), loss and gradient in one pass. Every pointer is device memory aligned to its elements.
// Each call queues its kernels on the calling thread's current stream, then copies the 24-byte
// result to the host (so it returns when the kernels are done), unless `result_dev` (a device
// LossResult) is given: then the result is written there and nothing waits (graph capture); its scratch (M doubles for
// cross-entropy, one double per 4096 elements for squared error) comes from the caching device
// allocator. The loss is summed in a fixed order that depends only on the shape: the same bits
// on every run. Throws std::runtime_error if a launch or the copy fails.
#pragma once

#include <cstdint>

namespace fastnn {
namespace cuda {

struct LossResult {
  double value;       // the mean cross-entropy / the sum of squared errors
  int64_t bad_row;    // cross-entropy with labels: the first row whose label is outside [0, C), else -1
  int64_t bad_label;  // that row's label (0 when bad_row is -1)
};

// Softmax cross-entropy of x (M, C), mean over rows, and when grad (M, C) is not null the
// gradient (softmax(x) * sum_j t_j - t) / M. Exactly one of labels32 / labels64 (M labels) / t
// (M, C soft targets) is not null. A label outside [0, C) is never used as an index: its row's
// loss is NaN, its gradient row is softmax / M, and bad_row / bad_label report it. NaN logits
// give NaN (no error).
LossResult softmax_xent(const float* x, const int32_t* labels32, const int64_t* labels64, const float* t,
                        float* grad, int64_t M, int64_t C, LossResult* result_dev = nullptr);
LossResult softmax_xent(const double* x, const int32_t* labels32, const int64_t* labels64, const double* t,
                        double* grad, int64_t M, int64_t C, LossResult* result_dev = nullptr);

// value = sum over n elements of (p - t)^2 (accumulated in double); grad (may be null) =
// scale * (p - t), one rounding per operation as on the CPU.
LossResult squared_error(const float* p, const float* t, float* grad, int64_t n, double scale,
                         LossResult* result_dev = nullptr);
LossResult squared_error(const double* p, const double* t, double* grad, int64_t n, double scale,
                         LossResult* result_dev = nullptr);
// (With result_dev the returned LossResult is {0, -1, 0}: read the device one.)

}  // namespace cuda
}  // namespace fastnn
