// Device code of csrc/cuda/dropout.cu: the dropout / DropConnect kernels and the host-side plans
// that pick their layout. Kept apart from the launchers (which need nvcc's <<<>>>) and written
// with plain C++ types only, so the same code can also be compiled for the host and run under a
// fiber-per-CUDA-thread emulation (with AddressSanitizer: every access in bounds; UBSan: every
// 16-byte access aligned) when no GPU is at hand.
//
// The stream (csrc/core/philox.h): position q uses word (q >> 4) & 3 of Philox counter
// (q >> 6) * 16 + (q & 15), so counter 16b + c gives the decisions of positions 64b + 16j + c,
// j = 0..3. A *unit* is G consecutive counters 16b + c0 .. 16b + c0 + G - 1 (c0 a multiple of G):
// 4G positions in 4 runs of G consecutive positions (64b + 16j + c0, j = 0..3). One thread per
// unit evaluates each of its counters once and moves each run as one packet: with G = 16 bytes /
// sizeof(T) (4 floats, 2 doubles) a packet is one 16-byte load and one 16-byte store; G = 1 is the
// per-element layout for pointers whose alignment does not fit the stream offset. Either way a
// warp's packet accesses cover whole 32-byte sectors (16 / G threads per block and run: 64 or
// 128 contiguous bytes), and every Philox counter is evaluated exactly once per kernel.
#pragma once

#include <cstdint>

#include "core/philox.h"

namespace fastnn {
namespace cuda {
namespace dropout_detail {

constexpr int kThreads = 256;  // threads per block of every kernel here
constexpr int kUnroll = 2;     // packets per thread and grid-stride iteration in apply_mask_kernel

// ---- packets ------------------------------------------------------------------------------------

// G consecutive elements loaded and stored together: one 16-byte access for G * sizeof(T) == 16
// (the address must then be 16-byte aligned), else G == 1 and a plain element access. Stores go
// through __stwb (st.global.wb: an ordinary write-back store) so that they stay one v4/v2 store
// (NVVM split a plain float4 store into four after the selects).
template <class T, int G>
struct Pack;

template <>
struct Pack<float, 4> {
  float v[4];
  static __device__ __forceinline__ Pack load(const float* p) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    return Pack{{t.x, t.y, t.z, t.w}};
  }
  __device__ __forceinline__ void store(float* p) const {
    __stwb(reinterpret_cast<float4*>(p), make_float4(v[0], v[1], v[2], v[3]));
  }
};

template <>
struct Pack<double, 2> {
  double v[2];
  static __device__ __forceinline__ Pack load(const double* p) {
    const double2 t = *reinterpret_cast<const double2*>(p);
    return Pack{{t.x, t.y}};
  }
  __device__ __forceinline__ void store(double* p) const {
    __stwb(reinterpret_cast<double2*>(p), make_double2(v[0], v[1]));
  }
};

template <class T>
struct Pack<T, 1> {
  T v[1];
  static __device__ __forceinline__ Pack load(const T* p) { return Pack{{*p}}; }
  __device__ __forceinline__ void store(T* p) const { *p = v[0]; }
};

// The inverted-dropout product of csrc/cpu/dropout.cpp: x * (keep ? scale : 0), one IEEE
// multiply (NaN stays NaN, dropped -x gives -0, dropped inf gives NaN).
template <class T>
__device__ __forceinline__ T keep_times(T x, uint32_t keep, T scale) {
  return x * (keep ? scale : T(0));
}

// ---- the stream ---------------------------------------------------------------------------------

// Keep bits of the unit (block b, counters c0 .. c0 + G - 1): bit j*G + g = position
// 64b + 16j + c0 + g is kept (its word >= thr). Each counter evaluated once.
template <int G>
__device__ __forceinline__ uint32_t unit_keep_bits(uint64_t seed, uint64_t b, int c0, uint32_t thr) {
  uint32_t bits = 0;
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const philox::U32x4 w = philox::counter_words(b * 16 + static_cast<uint64_t>(c0 + g), seed);
#pragma unroll
    for (int j = 0; j < 4; ++j) bits |= static_cast<uint32_t>(w.v[j] >= thr) << (j * G + g);
  }
  return bits;
}

// ---- y = x * (keep(q0 + i) ? scale : 0) ------------------------------------------------------------

// Positions q0 .. q0 + n - 1, q0 = 64*b0 + s, live in stream blocks b0 .. b0 + R - 1; unit u is
// block b0 + u / (16/G), counters c0 = (u % (16/G)) * G, and its first element (run j = 0) is
// i0 = 64 * (u / (16/G)) + c0 - s; run j holds elements i0 + 16j .. i0 + 16j + G - 1. A unit
// entirely in range moves 4 packets (all loaded before any Philox work, then stored); the at
// most 2 * 16/G partial units at the ends of the range go element by element, skipping the
// out-of-range positions (whose words are computed but unused). x + i0 must be 16-byte aligned
// whenever G > 1 (plan_apply checks it). y may be x: every element is read, then written, by
// one thread.
template <class T, int G>
__device__ __forceinline__ void apply_units(const T* x, T* y, int64_t n, uint64_t seed, uint64_t b0, int s,
                                            uint32_t thr, T scale, int64_t nunits) {
  constexpr int kUnitsPerBlock = 16 / G;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
#pragma unroll 1
  for (int64_t u = tid; u < nunits; u += stride) {
    const int64_t r = u / kUnitsPerBlock;
    const int c0 = static_cast<int>(u % kUnitsPerBlock) * G;
    const int64_t i0 = r * 64 + c0 - s;
    const uint64_t b = b0 + static_cast<uint64_t>(r);
    if (i0 >= 0 && i0 + 48 + G <= n) {
      Pack<T, G> a[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) a[j] = Pack<T, G>::load(x + i0 + 16 * j);
      const uint32_t keep = unit_keep_bits<G>(seed, b, c0, thr);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int g = 0; g < G; ++g) a[j].v[g] = keep_times(a[j].v[g], (keep >> (j * G + g)) & 1u, scale);
        a[j].store(y + i0 + 16 * j);
      }
    } else if (i0 + 48 + G > 0 && i0 < n) {  // some, not all, of the unit's positions are in range
      const uint32_t keep = unit_keep_bits<G>(seed, b, c0, thr);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const int64_t i = i0 + 16 * j + g;
          if (i >= 0 && i < n) y[i] = keep_times(x[i], (keep >> (j * G + g)) & 1u, scale);
        }
      }
    }
  }
}

template <class T, int G>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(const T* x, T* y, int64_t n, uint64_t seed, uint64_t b0, int s, uint32_t thr, T scale,
                 int64_t nunits) {
  apply_units<T, G>(x, y, n, seed, b0, s, thr, scale, nunits);
}

// Graph-safe dropout: seed = rng[0], positions rng[1] + shift + i, read on the device at run time,
// so a captured graph replayed after rng_advance_kernel draws a new mask. The offset is unknown to
// the host, hence the per-element layout (G = 1) and a grid sized for the worst shift.
template <class T>
__global__ void __launch_bounds__(kThreads)
    apply_dev_kernel(const T* x, T* y, int64_t n, const uint64_t* rng, uint64_t shift, uint32_t thr, T scale) {
  const uint64_t q0 = rng[1] + shift;
  const int s = static_cast<int>(q0 & 63);
  const int64_t nunits = ((static_cast<int64_t>(s) + n + 63) >> 6) * 16;
  apply_units<T, 1>(x, y, n, rng[0], q0 >> 6, s, thr, scale, nunits);
}

// rng[1] += count: the next step's positions follow this step's (one thread).
__global__ void rng_advance_kernel(uint64_t* rng, uint64_t count) {
  if (threadIdx.x == 0 && blockIdx.x == 0) rng[1] += count;
}

// ---- packed keep bits ---------------------------------------------------------------------------

// The 64-bit keep words K of two consecutive stream blocks b0 + r and b0 + r + 1 (bit t of K =
// position 64b + t kept), one warp, one counter per lane: lanes 0..15 evaluate counters c = lane
// of block r, lanes 16..31 those of block r + 1 (only when `both`; else those lanes evaluate
// nothing and *hi is 0). Blocks r >= R are 0 without any evaluation. Ballot j collects word j of
// every lane, i.e. positions 16j + c of both blocks. Must be called by all 32 lanes of the warp.
__device__ __forceinline__ void warp_keep_words(uint64_t seed, uint64_t b0, uint64_t R, uint64_t r, bool both,
                                                uint32_t thr, uint64_t* lo, uint64_t* hi) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const uint64_t rr = r + static_cast<uint64_t>(lane >> 4);
  const bool active = rr < R && (both || lane < 16);
  uint32_t keep = 0;  // bit j: word j >= thr
  if (active) {
    const philox::U32x4 w = philox::counter_words((b0 + rr) * 16 + static_cast<uint64_t>(lane & 15), seed);
#pragma unroll
    for (int j = 0; j < 4; ++j) keep |= static_cast<uint32_t>(w.v[j] >= thr) << j;
  }
  uint64_t l = 0, h = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t bal = __ballot_sync(0xFFFFFFFFu, (keep >> j) & 1u);
    l |= static_cast<uint64_t>(bal & 0xFFFFu) << (16 * j);
    h |= static_cast<uint64_t>(bal >> 16) << (16 * j);
  }
  *lo = l;
  *hi = h;
}

// Keep bits of positions q0 .. q0 + n - 1 (q0 = 64*b0 + s), packed: bit i of out[i / 8] =
// element i, the unused high bits of the last byte zero; ceil(n/8) bytes, each written once.
// Output word w (bits 64w .. 64w + 63) = (K[w] >> s) | (K[w + 1] << (64 - s)), K[r] the keep
// word of block b0 + r (0 for r >= R). A *tile* is 16 output words (128 bytes); each block of
// kThreads threads does tiles t_begin .. t_end - 1 in order, its 8 warps computing 16 keep words
// per tile into shared memory (2 per warp, one counter per thread) and its first 128 threads
// writing one byte each. For s != 0 the tile also needs the next tile's first word: the tile
// computes K[16t + 1 .. 16t + 16] and carries K[16t + 16] into the next tile's slot 0, so only the
// first word of a block's range is evaluated twice (by the block itself and by its predecessor).
__global__ void __launch_bounds__(kThreads)
    mask_kernel(uint8_t* out, int64_t n, uint64_t seed, uint64_t b0, int s, uint32_t thr, uint64_t R,
                int64_t ntiles, int64_t tiles_per_block) {
  __shared__ uint64_t K[17];
  const int tx = static_cast<int>(threadIdx.x);
  const int warp = tx >> 5, lane = tx & 31;
  const int64_t t_begin = static_cast<int64_t>(blockIdx.x) * tiles_per_block;
  const int64_t t_end = t_begin + tiles_per_block < ntiles ? t_begin + tiles_per_block : ntiles;
  if (t_begin >= t_end) return;  // (the whole block: no barrier is skipped by some threads only)
  const int base = s != 0 ? 1 : 0;
  const int64_t nbytes = (n + 7) >> 3;
  if (s != 0 && warp == 0) {
    uint64_t lo, hi;
    warp_keep_words(seed, b0, R, static_cast<uint64_t>(16 * t_begin), false, thr, &lo, &hi);
    if (lane == 0) K[0] = lo;
  }
#pragma unroll 1
  for (int64_t t = t_begin; t < t_end; ++t) {
    __syncthreads();  // K[0] is in place; the previous tile's bytes are written
    uint64_t lo, hi;
    warp_keep_words(seed, b0, R, static_cast<uint64_t>(16 * t + base + 2 * warp), true, thr, &lo, &hi);
    if (lane == 0) {
      K[base + 2 * warp] = lo;
      K[base + 2 * warp + 1] = hi;
    }
    __syncthreads();
    if (tx < 128) {
      const int64_t byte = 128 * t + tx;
      if (byte < nbytes) {
        const int wl = tx >> 3;
        uint64_t word = K[wl] >> s;
        if (s != 0) word |= K[wl + 1] << (64 - s);
        uint32_t v = static_cast<uint32_t>(word >> (8 * (tx & 7))) & 0xFFu;
        if (byte == nbytes - 1 && (n & 7) != 0) v &= (1u << (n & 7)) - 1u;
        out[byte] = static_cast<uint8_t>(v);
      }
    }
    __syncthreads();  // every thread is done reading K
    if (s != 0 && tx == 0) K[0] = K[16];
  }
}

// ---- y = x * (mask bit ? scale : 0) -----------------------------------------------------------------

// W bits of a packed mask from bit i on (bit i of the result = element i); they may straddle a
// byte boundary. Reads only bytes holding bits i .. i + W - 1.
template <int W>
__device__ __forceinline__ uint32_t mask_bits_at(const uint8_t* mask, int64_t i) {
  const int64_t byte = i >> 3;
  const int sh = static_cast<int>(i & 7);
  uint32_t v = mask[byte];
  if (sh + W > 8) v |= static_cast<uint32_t>(mask[byte + 1]) << 8;
  return v >> sh;
}

// Elements [head, head + nvec*W) in 16-byte packets (x + head and y + head 16-byte aligned),
// [0, head) and the tail element by element (everything when head = nvec = 0). y may be x.
template <class T>
__global__ void __launch_bounds__(kThreads)
    apply_mask_kernel(const T* x, const uint8_t* mask, T* y, int64_t n, int64_t head, int64_t nvec, T scale) {
  constexpr int W = 16 / static_cast<int>(sizeof(T));
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
#pragma unroll 1
  for (int64_t p = tid; p < nvec; p += kUnroll * stride) {
    Pack<T, W> a[kUnroll];
    uint32_t m[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t pu = p + u * stride;
      if (pu < nvec) {
        a[u] = Pack<T, W>::load(x + head + pu * W);
        m[u] = mask_bits_at<W>(mask, head + pu * W);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t pu = p + u * stride;
      if (pu < nvec) {
#pragma unroll
        for (int k = 0; k < W; ++k) a[u].v[k] = keep_times(a[u].v[k], (m[u] >> k) & 1u, scale);
        a[u].store(y + head + pu * W);
      }
    }
  }
  if (tid < head) y[tid] = keep_times(x[tid], mask_bits_at<1>(mask, tid) & 1u, scale);
#pragma unroll 1
  for (int64_t i = head + nvec * W + tid; i < n; i += stride)
    y[i] = keep_times(x[i], mask_bits_at<1>(mask, i) & 1u, scale);
}

// ---- plans (host side, no CUDA calls) ----------------------------------------------------------------

struct ApplyPlan {
  uint64_t b0;     // first stream block
  int s;           // q0 % 64
  int64_t nunits;  // units of G counters over blocks b0 .. b0 + R - 1
  bool vec;        // G = 16 / sizeof(T) (else G = 1)
};

// Stream positions q0 .. q0 + n - 1 (q0 + n - 1 < 2^64, n >= 1). Packets need x + i0 and y + i0
// 16-byte aligned, i0 = 64r + c0 - s with c0 a multiple of G: i.e. both pointers' element offsets
// within 16 bytes congruent to s modulo G. (Pointers are aligned to their elements.)
template <class T>
inline ApplyPlan plan_apply(const void* x, const void* y, int64_t n, uint64_t q0) {
  constexpr uint64_t G = 16 / sizeof(T);
  ApplyPlan p;
  p.b0 = q0 >> 6;
  p.s = static_cast<int>(q0 & 63);
  const uint64_t R = (static_cast<uint64_t>(p.s) + static_cast<uint64_t>(n) + 63) >> 6;
  const uint64_t xe = reinterpret_cast<uintptr_t>(x) / sizeof(T), ye = reinterpret_cast<uintptr_t>(y) / sizeof(T);
  const uint64_t sm = static_cast<uint64_t>(p.s);
  p.vec = ((xe - sm) % G) == 0 && ((ye - sm) % G) == 0;
  p.nunits = static_cast<int64_t>(R * (p.vec ? 16 / G : 16));
  return p;
}

struct MaskPlan {
  uint64_t b0, R;  // stream blocks b0 .. b0 + R - 1
  int s;
  int64_t ntiles;  // tiles of 128 output bytes
};

inline MaskPlan plan_mask(int64_t n, uint64_t q0) {
  MaskPlan p;
  p.b0 = q0 >> 6;
  p.s = static_cast<int>(q0 & 63);
  p.R = (static_cast<uint64_t>(p.s) + static_cast<uint64_t>(n) + 63) >> 6;
  p.ntiles = ((n + 7) / 8 + 127) / 128;
  return p;
}

struct MaskSplit {
  int64_t head, nvec;  // elements before the first packet; packets
};

// The packet split of apply_mask_kernel: x and y aligned alike (else all per element).
template <class T>
inline MaskSplit plan_apply_mask(const void* x, const void* y, int64_t n) {
  constexpr int64_t W = 16 / sizeof(T);
  const uintptr_t mis = reinterpret_cast<uintptr_t>(x) % 16;
  if (reinterpret_cast<uintptr_t>(y) % 16 != mis || mis % sizeof(T) != 0) return {0, 0};
  int64_t head = static_cast<int64_t>((16 - mis) % 16 / sizeof(T));
  if (head > n) head = n;
  return {head, (n - head) / W};
}

}  // namespace dropout_detail
}  // namespace cuda
}  // namespace fastnn
