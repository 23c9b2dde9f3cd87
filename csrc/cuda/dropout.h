// Dropout / DropConnect on the GPU: launchers callable from plain C++ (csrc/bindings/cuda.cpp).
// The same semantics, bit for bit, as csrc/cpu/dropout.h: position q = q0 + i (element i) is kept
// iff its 32 Philox bits (csrc/core/philox.h) are >= threshold = floor(p * 2^32).
// Every pointer is device memory; every launch is asynchronous on the calling thread's current
// stream (device.h) and throws std::runtime_error if the launch fails. n == 0 launches nothing. The
// caller guarantees q0 + n - 1 < 2^64 and pointers aligned to their elements.
#pragma once

#include <cstdint>

namespace fastnn {
namespace cuda {

// Keep bits of positions [q0, q0 + n), packed little-endian (bit i of out[i / 8] = position
// q0 + i); the unused high bits of the last byte are zero. Writes ceil(n/8) bytes.
void dropout_mask(uint64_t seed, uint64_t q0, int64_t n, uint32_t threshold, uint8_t* out);

// y[i] = x[i] * (keep(q0 + i) ? scale : 0), one IEEE product (NaN stays NaN); y may be x.
void dropout_apply(const float* x, float* y, int64_t n, uint64_t seed, uint64_t q0, uint32_t threshold, float scale);
void dropout_apply(const double* x, double* y, int64_t n, uint64_t seed, uint64_t q0, uint32_t threshold,
                   double scale);

// Graph-safe variant: seed = rng[0] and q0 = rng[1] + shift read on the device when the kernel runs
// (rng: a device uint64[2]); otherwise as dropout_apply.
void dropout_apply_dev(const float* x, float* y, int64_t n, const uint64_t* rng, uint64_t shift, uint32_t threshold,
                       float scale);
void dropout_apply_dev(const double* x, double* y, int64_t n, const uint64_t* rng, uint64_t shift,
                       uint32_t threshold, double scale);
// rng[1] += count on the device (after a step that used `count` positions), capturable in a graph.
void rng_advance(uint64_t* rng, uint64_t count);

// y[i] = x[i] * (bit i of mask ? scale : 0), mask packed as above (ceil(n/8) bytes); y may be x,
// mask must not overlap y.
void dropout_apply_mask(const float* x, const uint8_t* mask, float* y, int64_t n, float scale);
void dropout_apply_mask(const double* x, const uint8_t* mask, double* y, int64_t n, double scale);

}  // namespace cuda
}  // namespace fastnn
