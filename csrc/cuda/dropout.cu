// Dropout / DropConnect kernels on the GPU: the launchers. The kernels and their layouts are in
// csrc/cuda/dropout_kernels.cuh; csrc/cpu/dropout.cpp is the reference they match bit for bit
// (tests/test_cuda.py compares masks and outputs). One memory-bound pass each: the Philox work
// (10 rounds per counter, one counter per 4 elements) overlaps the loads of the same thread and
// the other warps' memory traffic; the ceiling is device-to-device copy bandwidth
// (bench/dropout_cuda.py measures both). Integer and IEEE-multiply only: nothing here depends on
// --use_fast_math or FMA contraction.
#include "cuda/dropout.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "cuda/device.h"
#include "cuda/dropout_kernels.cuh"
#include "cuda/launch.cuh"

namespace fastnn {
namespace cuda {
namespace {

using namespace dropout_detail;

using launch::check_launch;
using launch::ceil_div;
using launch::full_wave;

template <class Kernel>
unsigned grid_for(Kernel kernel, int64_t work) { return launch::grid_for<kThreads>(kernel, work); }

template <class T>
void apply_impl(const T* x, T* y, int64_t n, uint64_t seed, uint64_t q0, uint32_t thr, T scale) {
  if (n <= 0) return;
  const ApplyPlan p = plan_apply<T>(x, y, n, q0);
  if (p.vec) {
    auto kernel = apply_kernel<T, 16 / static_cast<int>(sizeof(T))>;
    kernel<<<grid_for(kernel, p.nunits), kThreads, 0, launch::stream()>>>(x, y, n, seed, p.b0, p.s, thr, scale, p.nunits);
  } else {
    auto kernel = apply_kernel<T, 1>;
    kernel<<<grid_for(kernel, p.nunits), kThreads, 0, launch::stream()>>>(x, y, n, seed, p.b0, p.s, thr, scale, p.nunits);
  }
  check_launch("dropout_apply kernel launch");
}

template <class T>
void apply_mask_impl(const T* x, const uint8_t* mask, T* y, int64_t n, T scale) {
  if (n <= 0) return;
  const MaskSplit s = plan_apply_mask<T>(x, y, n);
  auto kernel = apply_mask_kernel<T>;
  const int64_t work = s.nvec > 0 ? ceil_div(s.nvec, kUnroll) : n;
  kernel<<<grid_for(kernel, work), kThreads, 0, launch::stream()>>>(x, mask, y, n, s.head, s.nvec, scale);
  check_launch("dropout_apply_mask kernel launch");
}

}  // namespace

void dropout_mask(uint64_t seed, uint64_t q0, int64_t n, uint32_t threshold, uint8_t* out) {
  if (n <= 0) return;
  const MaskPlan p = plan_mask(n, q0);
  // Contiguous runs of tiles per block (the carried keep word needs them in order); every
  // block gets at least one tile.
  const int64_t blocks = std::max<int64_t>(1, std::min(p.ntiles, full_wave<kThreads>(mask_kernel)));
  const int64_t per_block = ceil_div(p.ntiles, blocks);
  const unsigned grid = static_cast<unsigned>(ceil_div(p.ntiles, per_block));
  mask_kernel<<<grid, kThreads, 0, launch::stream()>>>(out, n, seed, p.b0, p.s, threshold, p.R, p.ntiles, per_block);
  check_launch("dropout_mask kernel launch");
}

void dropout_apply(const float* x, float* y, int64_t n, uint64_t seed, uint64_t q0, uint32_t threshold, float scale) {
  apply_impl(x, y, n, seed, q0, threshold, scale);
}
void dropout_apply(const double* x, double* y, int64_t n, uint64_t seed, uint64_t q0, uint32_t threshold,
                   double scale) {
  apply_impl(x, y, n, seed, q0, threshold, scale);
}

namespace {
template <class T>
void apply_dev_impl(const T* x, T* y, int64_t n, const uint64_t* rng, uint64_t shift, uint32_t thr, T scale) {
  if (n <= 0) return;
  auto kernel = apply_dev_kernel<T>;
  const int64_t units = ((63 + n + 63) >> 6) * 16;
  kernel<<<grid_for(kernel, units), kThreads, 0, launch::stream()>>>(x, y, n, rng, shift, thr, scale);
  check_launch("dropout_apply_dev kernel launch");
}
}  // namespace

void dropout_apply_dev(const float* x, float* y, int64_t n, const uint64_t* rng, uint64_t shift, uint32_t threshold,
                       float scale) {
  apply_dev_impl(x, y, n, rng, shift, threshold, scale);
}
void dropout_apply_dev(const double* x, double* y, int64_t n, const uint64_t* rng, uint64_t shift,
                       uint32_t threshold, double scale) {
  apply_dev_impl(x, y, n, rng, shift, threshold, scale);
}

void rng_advance(uint64_t* rng, uint64_t count) {
  rng_advance_kernel<<<1, 1, 0, launch::stream()>>>(rng, count);
  check_launch("rng_advance kernel launch");
}

void dropout_apply_mask(const float* x, const uint8_t* mask, float* y, int64_t n, float scale) {
  apply_mask_impl(x, mask, y, n, scale);
}
void dropout_apply_mask(const double* x, const uint8_t* mask, double* y, int64_t n, double scale) {
  apply_mask_impl(x, mask, y, n, scale);
}

}  // namespace cuda
}  // namespace fastnn
