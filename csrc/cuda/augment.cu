// Data-augmentation kernels on the GPU: the fused crop / pad / flip / resized crop + colour jitter
// pass, Gaussian noise from the Philox stream, and the mixup blend. csrc/cpu/augment.cpp is the
// reference; this file reproduces its float32 operation sequence exactly:
//   * every multiply and add is spelled __fmul_rn / __fadd_rn (__dmul_rn / __dadd_rn), never
//     contracted into an FMA (the CPU copy is built with -ffp-contract=off); the file is also
//     compiled with -fmad=false (CMakeLists.txt) so that nothing else is contracted either;
//   * clamps are maxps/minps-style selects, so NaN propagates as on the CPU;
//   * the contrast stage's grayscale mean is summed as on the CPU: pixel p into float64 partial
//     sum p % 8, each partial in increasing pixel order, combined ((0+1)+(2+3))+((4+5)+(6+7)),
//     divided by the pixel count in float64, rounded once to float32.
// Hence flips, crops, padding, bilinear resizes, jitter and mixup are bit-identical to the CPU.
// Gaussian noise takes the same words and core/box_muller.h's libm-free formula, so it is too.
//
// The kernels live in csrc/cuda/augment_kernels.cuh (host-compilable: tests/test_augment_cuda_emulated.py
// runs them under a fiber-per-CUDA-thread emulation against the CPU); this file launches them.
// Kernels and their shapes (x is (N, C, H, W), y is (N, C, OH, OW), P = OH * OW):
//   contrast_mean_kernel   one block per sample (grid-stride): cm[i] = (1 - contrast_i) * mean of
//                          sample i's grayscale after geometry and brightness. Recomputes the
//                          geometry from x (no round trip through y); the gray values of 1024
//                          pixels at a time go to shared memory, and lanes 0..7 of warp 0 add
//                          them in the CPU's order while the other warps fill the next tile.
//                          Only launched with contrast jitter.
//   augment_apply_kernel   grid (ceil(units / 256), min(N, 65535)): blockIdx.y picks the sample
//                          (grid-stride), one thread per unit of it: a pixel (3 channels) with
//                          saturation jitter, else an element. Geometry, then brightness, contrast
//                          (with cm[i]) and saturation, each clamped; one write per output.
//   noise_kernel           tiles of 512 elements per block (grid-stride): the block's threads
//                          evaluate the <= 17 x 16 Philox counters of the tile's 1024 stream
//                          positions once into shared memory, then each thread makes 2 elements.
//   mix_kernel             grid (columns, rows): y[i, d] = lam * x[i, d] + lam1 * x[perm[i], d].
// Memory-bound passes with scalar, coalesced accesses (consecutive threads write consecutive
// output elements); the crop's contrast case reads x twice (mean, then apply).
#include "cuda/augment.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "cuda/augment_kernels.cuh"
#include "cuda/device.h"
#include "cuda/launch.cuh"

namespace fastnn {
namespace cuda {
namespace {

using namespace augment_detail;
using launch::ceil_div;
using launch::check_launch;

// ---- host helpers ------------------------------------------------------------------------------------------

// Device memory holding a copy of a host array, returned to fastnn's cache on scope exit (the
// cache orders reuse on stream 0, after the kernels queued here).
class DeviceCopy {
 public:
  DeviceCopy(const void* host, size_t bytes) : p_(device_malloc(bytes)) {
    try {
      memcpy_htod(p_, host, bytes);
    } catch (...) {
      device_free(p_);
      throw;
    }
  }
  explicit DeviceCopy(size_t bytes) : p_(device_malloc(bytes)) {}
  ~DeviceCopy() { device_free(p_); }
  DeviceCopy(const DeviceCopy&) = delete;
  DeviceCopy& operator=(const DeviceCopy&) = delete;
  template <class T>
  T* get() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_;
};

unsigned grid_y(int64_t N) { return static_cast<unsigned>(std::min<int64_t>(N, kMaxGridY)); }

template <class T>
void mixup_impl(const T* x, const int64_t* perm, T* y, int64_t N, int64_t D, T lam, T lam1) {
  if (N <= 0 || D <= 0) return;
  DeviceCopy dperm(perm, static_cast<size_t>(N) * sizeof(int64_t));
  const int64_t gx = std::min<int64_t>(ceil_div(D, kThreads), int64_t{1} << 20);
  const dim3 grid(static_cast<unsigned>(gx), grid_y(N));
  mix_kernel<T><<<grid, kThreads, 0, launch::stream()>>>(x, dperm.get<int64_t>(), y, N, D, lam, lam1);
  check_launch("mixup kernel launch");
}

template <class T>
void mixup_table_impl(const T* x, const int64_t* perms, const T* lams, const uint64_t* counter, int64_t stride, T* y,
                      int64_t N, int64_t D) {
  if (N <= 0 || D <= 0) return;
  const int64_t gx = std::min<int64_t>(ceil_div(D, kThreads), int64_t{1} << 20);
  const dim3 grid(static_cast<unsigned>(gx), grid_y(N));
  mix_kernel<T><<<grid, kThreads, 0, launch::stream()>>>(x, perms, y, N, D, T(0), T(0), lams, counter, stride);
  check_launch("mixup table kernel launch");
}

// The two launches of the fused pass on device parameters (ps; table mode when counter is set).
void launch_augment(const float* x, float* y, int64_t N, const AugShape& s, const AugSample* ps, float* cm,
                    const uint64_t* counter, int64_t stride) {
  const bool contrast = (s.jitter & kJitContrast) != 0, saturation = (s.jitter & kJitSaturation) != 0;
  if (contrast) {
    const int64_t blocks = std::max<int64_t>(1, std::min(N, launch::full_wave<kThreads>(contrast_mean_kernel)));
    contrast_mean_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, launch::stream()>>>(x, ps, s, N, cm, counter,
                                                                                            stride);
    check_launch("augment contrast mean kernel launch");
  }
  const int64_t units = saturation ? s.OH * s.OW : s.C * s.OH * s.OW;
  const dim3 grid(static_cast<unsigned>(ceil_div(units, kThreads)), grid_y(N));
  augment_apply_kernel<<<grid, kThreads, 0, launch::stream()>>>(x, y, ps, contrast ? cm : nullptr, s, N, counter,
                                                                stride);
  check_launch("augment kernel launch");
}

void check_sample_elements(const AugShape& s) {
  const int64_t out_n = s.C * s.OH * s.OW;
  if (out_n > kAugMaxSampleElements)
    throw std::invalid_argument("out: expected at most 2**31 - 1 elements per sample (C * OH * OW) on the GPU, got " +
                                std::to_string(out_n));
}

}  // namespace

void augment_batch(const float* x, float* y, int64_t N, const AugShape& s, const AugSample* params) {
  if (N <= 0 || s.C * s.OH * s.OW == 0) return;
  check_sample_elements(s);
  const bool contrast = (s.jitter & kJitContrast) != 0;
  // (A synchronous copy from pageable memory: it waits for the earlier stream-0 work. A pinned,
  // event-guarded staging buffer would let the host run ahead; not done yet. The training step
  // uses augment_batch_table instead: its draws are uploaded once per epoch.)
  DeviceCopy dparams(params, static_cast<size_t>(N) * sizeof(AugSample));
  std::unique_ptr<DeviceCopy> dcm;
  if (contrast) dcm.reset(new DeviceCopy(static_cast<size_t>(N) * sizeof(float)));
  launch_augment(x, y, N, s, dparams.get<AugSample>(), contrast ? dcm->get<float>() : nullptr, nullptr, 0);
}

void augment_batch_table(const float* x, float* y, int64_t N, const AugShape& s, const AugSample* samples,
                         const uint64_t* counter, int64_t stride, float* cm) {
  if (N <= 0 || s.C * s.OH * s.OW == 0) return;
  check_sample_elements(s);
  launch_augment(x, y, N, s, samples, cm, counter, stride);
}

void gaussian_noise(const float* x, float* y, int64_t n, uint64_t seed, uint64_t q0, float std, bool noise,
                    bool clip) {
  if (n <= 0) return;
  const int64_t ntiles = ceil_div(n, kNoiseElems);
  const int64_t blocks = std::max<int64_t>(1, std::min(ntiles, launch::full_wave<kThreads>(noise_kernel)));
  noise_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, launch::stream()>>>(x, y, n, seed, q0, std, noise, clip, ntiles);
  check_launch("gaussian noise kernel launch");
}

void gaussian_noise_table(const float* x, float* y, int64_t n, const uint64_t* sq, const uint64_t* counter, float std,
                          bool noise, bool clip) {
  if (n <= 0) return;
  const int64_t ntiles = ceil_div(n, kNoiseElems);
  const int64_t blocks = std::max<int64_t>(1, std::min(ntiles, launch::full_wave<kThreads>(noise_kernel)));
  noise_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, launch::stream()>>>(x, y, n, 0, 0, std, noise, clip,
                                                                                  ntiles, sq, counter);
  check_launch("gaussian noise table kernel launch");
}

void mixup_apply_table(const float* x, const int64_t* perms, const float* lams, const uint64_t* counter, int64_t stride,
                       float* y, int64_t N, int64_t D) {
  mixup_table_impl(x, perms, lams, counter, stride, y, N, D);
}
void mixup_apply_table(const double* x, const int64_t* perms, const double* lams, const uint64_t* counter,
                       int64_t stride, double* y, int64_t N, int64_t D) {
  mixup_table_impl(x, perms, lams, counter, stride, y, N, D);
}

void mixup_apply(const float* x, const int64_t* perm, float* y, int64_t N, int64_t D, float lam, float lam1) {
  mixup_impl(x, perm, y, N, D, lam, lam1);
}
void mixup_apply(const double* x, const int64_t* perm, double* y, int64_t N, int64_t D, double lam,
                 double lam1) {
  mixup_impl(x, perm, y, N, D, lam, lam1);
}

}  // namespace cuda
}  // namespace fastnn
