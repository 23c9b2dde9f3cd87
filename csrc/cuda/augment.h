// Data augmentation on the GPU: launchers callable from plain C++ (csrc/bindings/cuda_augment.cpp).
// The semantics of csrc/cpu/augment.h, which is the reference (tests/test_augment_cuda.py compares
// the two on the same input and seed):
//   * crops, padding, flips, bilinear resized crops, colour jitter and the mixup blend: bit for
//     bit (the same float32/float64 operations in the same order, each rounded once: csrc/cuda/
//     augment.cu spells them with __fmul_rn/__fadd_rn and is also built with -fmad=false);
//   * Gaussian noise: the same Philox words and Box-Muller formula, but CUDA's logf/cosf differ
//     from glibc's in the last bits: |gpu - cpu| <= 3e-6 * std + 1 ulp of the result.
// Per-sample parameters (flip, crop box, jitter factors; the mixup permutation) are drawn on the
// host by python/fastnn/augment.py and passed here as host arrays, already validated by the
// binding; the launcher uploads them. Every pointer else is device memory; every launch is
// asynchronous on the legacy default stream (stream 0) and throws std::runtime_error if it fails.
#pragma once

#include <cstdint>

#include "cpu/augment.h"  // AugShape, AugSample and the geometry / padding / jitter constants

namespace fastnn {
namespace cuda {

// Largest C * OH * OW per sample: the kernels index within a sample in 32 bits.
constexpr int64_t kAugMaxSampleElements = (int64_t{1} << 31) - 1;

// x (N, C, H, W) -> y (N, C, OH, OW): geometry (crop with padding and flip, or resized crop and
// flip) then the jitter stages of s.jitter, sample i with params[i] (N host structs). y must not
// overlap x. Throws std::invalid_argument when C * OH * OW > kAugMaxSampleElements.
void augment_batch(const float* x, float* y, int64_t N, const AugShape& s, const AugSample* params);

// y[e] = x[e] + std * z_e (z_e from stream positions q0 + 2e, q0 + 2e + 1) when `noise`, else
// y[e] = x[e]; then clamped to [0, 1] (NaN and -0 kept, as np.clip) when `clip`. y may be
// x. The caller guarantees q0 + 2n - 1 < 2^64.
void gaussian_noise(const float* x, float* y, int64_t n, uint64_t seed, uint64_t q0, float std, bool noise,
                    bool clip);

// y[i, :] = lam * x[i, :] + lam1 * x[perm[i], :] over N rows of D elements; perm is a host array
// of N indices in [0, N) (uploaded here). y must not overlap x.
void mixup_apply(const float* x, const int64_t* perm, float* y, int64_t N, int64_t D, float lam, float lam1);
void mixup_apply(const double* x, const int64_t* perm, double* y, int64_t N, int64_t D, double lam, double lam1);

}  // namespace cuda
}  // namespace fastnn
