// csrc/cuda/augment_kernels.cuh compiled for the host under tests/cuda_emulation/emu.h, with the
// launch shapes of csrc/cuda/augment.cu (the grid sizes are arguments, to exercise grid strides).
// Loaded with ctypes by tests/test_augment_cuda_emulated.py.
#include "cuda_emulation/emu.h"

#include <vector>

#include "cuda/augment_kernels.cuh"

using namespace fastnn;
using namespace fastnn::cuda::augment_detail;

extern "C" {

void emu_augment(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
                 int geom, int pad, float fill, int jitter, const AugSample* ps, int mean_blocks, int gy_cap) {
  AugShape s{C, H, W, OH, OW, geom, pad, jitter, fill};
  std::vector<float> cm(N > 0 ? N : 1);
  if (jitter & kJitContrast)
    emu_launch(mean_blocks, 1, kThreads, [&] { contrast_mean_kernel(x, ps, s, N, cm.data()); });
  const int64_t units = (jitter & kJitSaturation) ? OH * OW : C * OH * OW;
  emu_launch(static_cast<unsigned>((units + kThreads - 1) / kThreads), static_cast<unsigned>(N < gy_cap ? N : gy_cap),
             kThreads, [&] { augment_apply_kernel(x, y, ps, cm.data(), s, N); });
}

void emu_noise(const float* x, float* y, int64_t n, uint64_t seed, uint64_t q0, float sd, int noise, int clip,
               int blocks) {
  const int64_t ntiles = (n + kNoiseElems - 1) / kNoiseElems;
  emu_launch(blocks, 1, kThreads, [&] { noise_kernel(x, y, n, seed, q0, sd, noise != 0, clip != 0, ntiles); });
}

void emu_mix32(const float* x, const int64_t* perm, float* y, int64_t N, int64_t D, float lam, float lam1, int gx,
               int gy) {
  emu_launch(gx, gy, kThreads, [&] { mix_kernel<float>(x, perm, y, N, D, lam, lam1); });
}

void emu_mix64(const double* x, const int64_t* perm, double* y, int64_t N, int64_t D, double lam, double lam1,
               int gx, int gy) {
  emu_launch(gx, gy, kThreads, [&] { mix_kernel<double>(x, perm, y, N, D, lam, lam1); });
}

// Table mode (csrc/cuda/augment.cu's *_table launchers): the step's parameters at row *ctr of
// the epoch's tables, read by the kernels themselves.
void emu_augment_table(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
                       int geom, int pad, float fill, int jitter, const AugSample* table, const uint64_t* ctr,
                       int64_t stride, int mean_blocks, int gy_cap) {
  AugShape s{C, H, W, OH, OW, geom, pad, jitter, fill};
  std::vector<float> cm(N > 0 ? N : 1);
  if (jitter & kJitContrast)
    emu_launch(mean_blocks, 1, kThreads, [&] { contrast_mean_kernel(x, table, s, N, cm.data(), ctr, stride); });
  const int64_t units = (jitter & kJitSaturation) ? OH * OW : C * OH * OW;
  emu_launch(static_cast<unsigned>((units + kThreads - 1) / kThreads), static_cast<unsigned>(N < gy_cap ? N : gy_cap),
             kThreads, [&] { augment_apply_kernel(x, y, table, cm.data(), s, N, ctr, stride); });
}

void emu_noise_table(const float* x, float* y, int64_t n, const uint64_t* sq, const uint64_t* ctr, float sd, int noise,
                     int clip, int blocks) {
  const int64_t ntiles = (n + kNoiseElems - 1) / kNoiseElems;
  emu_launch(blocks, 1, kThreads, [&] { noise_kernel(x, y, n, 0, 0, sd, noise != 0, clip != 0, ntiles, sq, ctr); });
}

void emu_mix32_table(const float* x, const int64_t* perms, const float* lams, const uint64_t* ctr, int64_t stride,
                     float* y, int64_t N, int64_t D, int gx, int gy) {
  emu_launch(gx, gy, kThreads, [&] { mix_kernel<float>(x, perms, y, N, D, 0.0f, 0.0f, lams, ctr, stride); });
}

void emu_mix64_table(const double* x, const int64_t* perms, const double* lams, const uint64_t* ctr, int64_t stride,
                     double* y, int64_t N, int64_t D, int gx, int gy) {
  emu_launch(gx, gy, kThreads, [&] { mix_kernel<double>(x, perms, y, N, D, 0.0, 0.0, lams, ctr, stride); });
}

// core/box_muller.h's ln and cos over their whole domains: ln[k] = ln((k + 1) / 2^24) and
// cos[k] = cos(2 pi k / 2^24) for k in [0, 2^24).
void emu_box_muller_tables(float* ln, float* cos) {
  for (uint32_t k = 0; k < (1u << 24); ++k) {
    ln[k] = fastnn::box_muller::ln_unit(static_cast<float>(k + 1u) * 0x1p-24f);
    cos[k] = fastnn::box_muller::cos_turn24(k);
  }
}

}  // extern "C"
