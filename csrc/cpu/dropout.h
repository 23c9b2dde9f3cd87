// Dropout / DropConnect kernel family (csrc/cpu/dropout.cpp, compiled once per ISA). Decisions
// come from the Philox stream of csrc/core/philox.h: position q = offset + element index is kept
// iff its 32 random bits are >= threshold (= floor(p * 2^32)); identical on every path.
#pragma once

#include <cstdint>

namespace fastnn {

template <class T>
struct DropoutKernelsT {
  // y[i] = x[i] * (keep(q0 + i) ? scale : 0): the inverted-dropout product, NaN-propagating.
  void (*apply)(const T* x, T* y, int64_t n, uint64_t seed, uint64_t q0, uint32_t threshold, T scale, bool stream);
  // y[i] = x[i] * (bit i of mask ? scale : 0), with a stored mask (bit 0 of mask[0] = element 0).
  void (*apply_mask)(const T* x, const uint8_t* mask, T* y, int64_t n, T scale, bool stream);
};

struct DropoutKernels {
  // Keep bits of positions [q0, q0 + n), packed little-endian (bit i of byte i/8 = position
  // q0 + i); the unused high bits of the last byte are zero. Writes ceil(n/8) bytes.
  void (*mask_bits)(uint64_t seed, uint64_t q0, int64_t n, uint32_t threshold, uint8_t* out);
  DropoutKernelsT<float> f32;
  DropoutKernelsT<double> f64;
};

namespace baseline { extern const DropoutKernels kDropoutKernels; }
namespace avx2 { extern const DropoutKernels kDropoutKernels; }
namespace avx512 { extern const DropoutKernels kDropoutKernels; }

}  // namespace fastnn
