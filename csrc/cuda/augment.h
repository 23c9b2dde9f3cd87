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

// Table mode, for a training step captured as a CUDA graph: the same kernels, with the step's
// parameters read on the device from tables holding a whole epoch's draws, at row r = *counter
// (a device uint64, read when the kernels run: each replay sees its own step). No upload, no
// allocation but the contrast means' scratch (cm: N floats of device memory the caller owns,
// unused without contrast jitter), no synchronization: capturable. The tables are trusted (the
// binding cannot read device memory): their rows come from augment_pack_samples (checked on the
// host) and the caller keeps r within them.
//   augment_batch_table: sample i of the step uses samples[r * stride + i] (stride = the full
//     batch; the last, smaller batch has N < stride).
//   gaussian_noise_table: (seed, q0) = sq[2r], sq[2r + 1].
//   mixup_apply_table: perm = perms + r * stride, (lam, lam1) = lams[2r], lams[2r + 1].
void augment_batch_table(const float* x, float* y, int64_t N, const AugShape& s, const AugSample* samples,
                         const uint64_t* counter, int64_t stride, float* cm);
void gaussian_noise_table(const float* x, float* y, int64_t n, const uint64_t* sq, const uint64_t* counter, float std,
                          bool noise, bool clip);
void mixup_apply_table(const float* x, const int64_t* perms, const float* lams, const uint64_t* counter, int64_t stride,
                       float* y, int64_t N, int64_t D);
void mixup_apply_table(const double* x, const int64_t* perms, const double* lams, const uint64_t* counter,
                       int64_t stride, double* y, int64_t N, int64_t D);

}  // namespace cuda
}  // namespace fastnn
