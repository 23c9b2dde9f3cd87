// Loss kernels on the GPU, float32 and float64: csrc/cpu/loss.cpp is the reference (same
// formulas; tests/test_losses_cuda.py compares the two).
//
// Softmax cross-entropy: one warp per row of C logits (8 rows per 256-thread block); lane l
// takes columns l, l + 32, ...:
//   pass 1  m = max_j x_j (NaN wins), warp butterfly
//   pass 2  e_j = exp(x_j - m) (CUDA's accurate expf/exp of a non-positive argument) written to
//           grad; s = sum e_j (soft targets also sum t_j and t_j (m - x_j)) in double, butterfly
//   pass 3  grad_j = e_j * (scale * sum_t / s) - scale * t_j   (labels: - scale at j = y)
// Pass 3 re-reads the e_j the same lane wrote in pass 2 (no synchronization needed). Row losses
// go to a scratch array in double; one block then adds them in a fixed order (thread t takes rows
// t, t + 256, ..., then a fixed tree), multiplies by 1/M, and finds the first out-of-range
// label. No float atomics anywhere: the loss has the same bits on every run. A butterfly gives
// every lane the same sum (a + b == b + a at each level), so the lanes agree on s.
//
// Squared error: one block per fixed chunk of 4096 elements (a sum in double per chunk, then the
// same fixed-order final sum), so the result depends only on n, not on the GPU.
//
// Math: expf/exp/log1p are CUDA's accurate versions (this file must not be built with
// --use_fast_math); the gradient's product and difference are explicitly rounded as on the CPU.
#include "cuda/loss.h"

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/device.h"
#include "cuda/launch.cuh"
#include "cuda/loss_kernels.cuh"

namespace fastnn {
namespace cuda {
namespace {

using namespace loss_detail;

// ------------------------------------------------------------------------------------------------
// kernel launchers

// Scratch from the caching allocator: the result first (8-byte fields), then `count` doubles.
// Freed when the launcher returns: the blocks' next user is ordered after these kernels on
// stream 0 (csrc/cuda/device.h).
struct Scratch {
  void* p = nullptr;
  explicit Scratch(int64_t count) { p = device_malloc(sizeof(LossResult) + static_cast<size_t>(count) * sizeof(double)); }
  ~Scratch() {
    if (p) device_free(p);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  LossResult* result() const { return static_cast<LossResult*>(p); }
  double* doubles() const { return reinterpret_cast<double*>(static_cast<char*>(p) + sizeof(LossResult)); }
};

template <class T, class Label, bool kSoft>
LossResult xent_impl(const T* x, const Label* y, const T* t, T* grad, int64_t M, int64_t C, LossResult* out) {
  LossResult res{0.0, -1, 0};
  if (M <= 0 || C <= 0) return res;
  Scratch ws(M);
  LossResult* dst = out != nullptr ? out : ws.result();
  const double scale = 1.0 / static_cast<double>(M);
  const unsigned grid = static_cast<unsigned>(launch::ceil_div(M, kWarps));
  xent_rows_kernel<T, Label, kSoft><<<grid, kThreads, 0, launch::stream()>>>(x, y, t, grad, ws.doubles(), M, C, scale);
  launch::check_launch("softmax_xent kernel launch");
  finalize_kernel<Label><<<1, kThreads, 0, launch::stream()>>>(ws.doubles(), M, scale, kSoft ? nullptr : y, M, C, dst);
  launch::check_launch("softmax_xent final sum launch");
  if (out == nullptr) memcpy_dtoh(&res, dst, sizeof res);
  return res;
}

template <class T>
LossResult xent_dispatch(const T* x, const int32_t* y32, const int64_t* y64, const T* t, T* grad, int64_t M,
                         int64_t C, LossResult* out) {
  if (t) return xent_impl<T, int64_t, true>(x, nullptr, t, grad, M, C, out);
  if (y32) return xent_impl<T, int32_t, false>(x, y32, nullptr, grad, M, C, out);
  return xent_impl<T, int64_t, false>(x, y64, nullptr, grad, M, C, out);
}

template <class T>
LossResult squared_error_impl(const T* p, const T* t, T* grad, int64_t n, double scale, LossResult* out) {
  LossResult res{0.0, -1, 0};
  if (n <= 0 && out == nullptr) return res;
  const int64_t nchunks = launch::ceil_div(n, kChunk);
  Scratch ws(nchunks);  // (0 doubles still gives the result slot)
  if (nchunks > 0) {  // n == 0 with a device result: only the final kernel (it writes 0)
    squared_error_kernel<T><<<static_cast<unsigned>(nchunks), kThreads, 0, launch::stream()>>>(
        p, t, grad, n, static_cast<T>(scale), ws.doubles());
    launch::check_launch("squared_error kernel launch");
  }
  finalize_kernel<int64_t><<<1, kThreads, 0, launch::stream()>>>(ws.doubles(), nchunks, 1.0, nullptr, 0, 0,
                                                                 out != nullptr ? out : ws.result());
  launch::check_launch("squared_error final sum launch");
  if (out == nullptr) memcpy_dtoh(&res, ws.result(), sizeof res);
  return res;
}

}  // namespace

LossResult softmax_xent(const float* x, const int32_t* labels32, const int64_t* labels64, const float* t,
                        float* grad, int64_t M, int64_t C, LossResult* result_dev) {
  return xent_dispatch(x, labels32, labels64, t, grad, M, C, result_dev);
}
LossResult softmax_xent(const double* x, const int32_t* labels32, const int64_t* labels64, const double* t,
                        double* grad, int64_t M, int64_t C, LossResult* result_dev) {
  return xent_dispatch(x, labels32, labels64, t, grad, M, C, result_dev);
}

LossResult squared_error(const float* p, const float* t, float* grad, int64_t n, double scale,
                         LossResult* result_dev) {
  return squared_error_impl(p, t, grad, n, scale, result_dev);
}
LossResult squared_error(const double* p, const double* t, double* grad, int64_t n, double scale,
                         LossResult* result_dev) {
  return squared_error_impl(p, t, grad, n, scale, result_dev);
}

}  // namespace cuda
}  // namespace fastnn
