// csrc/cuda/dropout_kernels.cuh compiled for the host under tests/cuda_emulation/emu.h, with the
// plans and launch shapes of csrc/cuda/dropout.cu (the grid size is an argument, to exercise grid
// strides). Loaded with ctypes by tests/test_dropout_cuda_emulated.py.
#include "cuda_emulation/emu.h"

#include <cstdint>

#include "cuda/dropout_kernels.cuh"

using namespace fastnn::cuda::dropout_detail;

namespace {

template <class T>
void apply(const T* x, T* y, int64_t n, uint64_t seed, uint64_t q0, uint32_t thr, T scale, int grid) {
  if (n <= 0) return;
  const ApplyPlan p = plan_apply<T>(x, y, n, q0);
  if (p.vec)
    emu_launch(grid, 1, kThreads, [&] {
      apply_kernel<T, 16 / static_cast<int>(sizeof(T))>(x, y, n, seed, p.b0, p.s, thr, scale, p.nunits);
    });
  else
    emu_launch(grid, 1, kThreads, [&] { apply_kernel<T, 1>(x, y, n, seed, p.b0, p.s, thr, scale, p.nunits); });
}

template <class T>
void apply_dev(const T* x, T* y, int64_t n, const uint64_t* rng, uint64_t shift, uint32_t thr, T scale, int grid) {
  if (n <= 0) return;
  emu_launch(grid, 1, kThreads, [&] { apply_dev_kernel<T>(x, y, n, rng, shift, thr, scale); });
}

template <class T>
void apply_mask(const T* x, const uint8_t* mask, T* y, int64_t n, T scale, int grid) {
  if (n <= 0) return;
  const MaskSplit s = plan_apply_mask<T>(x, y, n);
  emu_launch(grid, 1, kThreads, [&] { apply_mask_kernel<T>(x, mask, y, n, s.head, s.nvec, scale); });
}

}  // namespace

extern "C" {
void emu_apply32(const float* x, float* y, int64_t n, uint64_t seed, uint64_t q0, uint32_t thr, float scale, int grid) {
  apply<float>(x, y, n, seed, q0, thr, scale, grid);
}
void emu_apply64(const double* x, double* y, int64_t n, uint64_t seed, uint64_t q0, uint32_t thr, double scale,
                 int grid) {
  apply<double>(x, y, n, seed, q0, thr, scale, grid);
}
void emu_apply_dev32(const float* x, float* y, int64_t n, const uint64_t* rng, uint64_t shift, uint32_t thr,
                     float scale, int grid) {
  apply_dev<float>(x, y, n, rng, shift, thr, scale, grid);
}
void emu_apply_dev64(const double* x, double* y, int64_t n, const uint64_t* rng, uint64_t shift, uint32_t thr,
                     double scale, int grid) {
  apply_dev<double>(x, y, n, rng, shift, thr, scale, grid);
}
void emu_rng_advance(uint64_t* rng, uint64_t count) {
  emu_launch(1, 1, 1, [&] { rng_advance_kernel(rng, count); });
}
void emu_mask(uint8_t* out, int64_t n, uint64_t seed, uint64_t q0, uint32_t thr, int blocks) {
  if (n <= 0) return;
  const MaskPlan p = plan_mask(n, q0);
  const int64_t b = blocks < p.ntiles ? blocks : p.ntiles;
  const int64_t per_block = (p.ntiles + b - 1) / b;
  const unsigned grid = static_cast<unsigned>((p.ntiles + per_block - 1) / per_block);
  emu_launch(grid, 1, kThreads, [&] { mask_kernel(out, n, seed, p.b0, p.s, thr, p.R, p.ntiles, per_block); });
}
void emu_apply_mask32(const float* x, const uint8_t* mask, float* y, int64_t n, float scale, int grid) {
  apply_mask<float>(x, mask, y, n, scale, grid);
}
void emu_apply_mask64(const double* x, const uint8_t* mask, double* y, int64_t n, double scale, int grid) {
  apply_mask<double>(x, mask, y, n, scale, grid);
}
}
