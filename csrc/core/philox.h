// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
// counter-based generator, (counter[4], key[2]) -> 4 x 32 random bits, written once for host and
// CUDA device code. Every random decision in fastnn is a pure function of (seed, position).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTNN_HD __host__ __device__ __forceinline__
#else
#define FASTNN_HD inline
#endif

namespace fastnn {
namespace philox {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // Weyl key increments
constexpr int kRounds = 10;

struct U32x4 {
  uint32_t v[4];
};

FASTNN_HD void mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
#if defined(__CUDA_ARCH__)
  // The same two halves; spelled as 32-bit operations so NVVM never falls back to a 64-bit
  // multiply (it did across the rounds of a 4-counter unrolled loop).
  *hi = __umulhi(a, b);
  *lo = a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
#endif
}

// One Philox4x32 evaluation: 10 rounds, the key bumped by the Weyl constants between rounds.
FASTNN_HD U32x4 philox4x32(U32x4 ctr, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < kRounds; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, ctr.v[0], &hi0, &lo0);
    mulhilo(kM1, ctr.v[2], &hi1, &lo1);
    U32x4 next = {{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    ctr = next;
    k0 += kW0;
    k1 += kW1;
  }
  return ctr;
}

// ---- fastnn's stream layout ----------------------------------------------------------------
// Position q (offset + element index, 64-bit) belongs to block b = q / 64. A block uses the 16
// counters 16b .. 16b+15; position q takes word j = (q / 16) % 4 of counter 16b + q % 16. So a
// SIMD lane per counter yields, per output word, the decisions for 16 consecutive positions.
// The 64-bit seed is the key (low word k0, high word k1); the counter is (lo32(c), hi32(c), 0, 0).

FASTNN_HD U32x4 counter_words(uint64_t counter, uint64_t seed) {
  U32x4 c = {{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u}};
  return philox4x32(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The 32 random bits of stream position q.
FASTNN_HD uint32_t bits_at(uint64_t seed, uint64_t q) {
  const uint64_t counter = (q >> 6) * 16 + (q & 15);
  return counter_words(counter, seed).v[(q >> 4) & 3];
}

// Dropout decisions: position q is dropped iff its bits are < threshold, threshold =
// floor(p * 2^32) (p < 1; p == 1 drops everything and is handled by the callers).
FASTNN_HD uint32_t drop_threshold(double p) {
  const double t = p * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

}  // namespace philox
}  // namespace fastnn
