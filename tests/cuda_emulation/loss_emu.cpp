// csrc/cuda/loss_kernels.cuh compiled for the host under tests/cuda_emulation/emu.h, with the
// launch shapes of csrc/cuda/loss.cu. Loaded with ctypes by tests/test_loss_cuda_emulated.py.
#include "cuda_emulation/emu.h"

#include <cstdint>
#include <vector>

#include "cuda/loss_kernels.cuh"

using namespace fastnn::cuda;
using namespace fastnn::cuda::loss_detail;

namespace {

// kind: 0 int32 labels, 1 int64 labels, 2 soft targets. Returns the LossResult in *out.
template <class T>
void xent(const T* x, const void* target, int kind, T* grad, int64_t M, int64_t C, LossResult* out) {
  std::vector<double> rows(static_cast<size_t>(M));
  const double scale = 1.0 / static_cast<double>(M);
  const unsigned grid = static_cast<unsigned>((M + kWarps - 1) / kWarps);
  if (kind == 0) {
    auto y = static_cast<const int32_t*>(target);
    emu_launch(grid, 1, kThreads, [&] { xent_rows_kernel<T, int32_t, false>(x, y, nullptr, grad, rows.data(), M, C, scale); });
    emu_launch(1, 1, kThreads, [&] { finalize_kernel<int32_t>(rows.data(), M, scale, y, M, C, out); });
  } else if (kind == 1) {
    auto y = static_cast<const int64_t*>(target);
    emu_launch(grid, 1, kThreads, [&] { xent_rows_kernel<T, int64_t, false>(x, y, nullptr, grad, rows.data(), M, C, scale); });
    emu_launch(1, 1, kThreads, [&] { finalize_kernel<int64_t>(rows.data(), M, scale, y, M, C, out); });
  } else {
    auto t = static_cast<const T*>(target);
    emu_launch(grid, 1, kThreads, [&] { xent_rows_kernel<T, int64_t, true>(x, nullptr, t, grad, rows.data(), M, C, scale); });
    emu_launch(1, 1, kThreads, [&] { finalize_kernel<int64_t>(rows.data(), M, scale, nullptr, M, C, out); });
  }
}

template <class T>
void sq(const T* p, const T* t, T* grad, int64_t n, double scale, LossResult* out) {
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(static_cast<size_t>(nchunks > 0 ? nchunks : 1));
  if (nchunks > 0)
    emu_launch(static_cast<unsigned>(nchunks), 1, kThreads,
               [&] { squared_error_kernel<T>(p, t, grad, n, static_cast<T>(scale), part.data()); });
  emu_launch(1, 1, kThreads, [&] { finalize_kernel<int64_t>(part.data(), nchunks, 1.0, nullptr, 0, 0, out); });
}

}  // namespace

extern "C" {
void emu_xent32(const float* x, const void* target, int kind, float* grad, int64_t M, int64_t C, LossResult* out) {
  xent<float>(x, target, kind, grad, M, C, out);
}
void emu_xent64(const double* x, const void* target, int kind, double* grad, int64_t M, int64_t C, LossResult* out) {
  xent<double>(x, target, kind, grad, M, C, out);
}
void emu_sq32(const float* p, const float* t, float* grad, int64_t n, double scale, LossResult* out) {
  sq<float>(p, t, grad, n, scale, out);
}
void emu_sq64(const double* p, const double* t, double* grad, int64_t n, double scale, LossResult* out) {
  sq<double>(p, t, grad, n, scale, out);
}
}
