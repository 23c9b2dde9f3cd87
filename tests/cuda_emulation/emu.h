// A thread-per-CUDA-thread host emulation of the CUDA built-ins the kernel headers use
// (csrc/cuda/augment_kernels.cuh, linear_kernels.cuh), for checking their index math and barrier structure on a
// machine without a GPU (tests/test_augment_cuda_emulated.py). Blocks run one after another; the
// threads of a block are std::threads meeting at a std::barrier for __syncthreads and at one
// barrier per warp for __shfl_sync; __shared__ variables are function statics (one block at a
// time). The _rn intrinsics are the host's IEEE operations (compile with -ffp-contract=off). Not
// emulated: CUDA's own logf/cosf (the host's libm is used), memory-model subtleties beyond the
// barriers, launch limits.
#pragma once

#include <atomic>
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

using std::isnan;
using std::max;
using std::min;

struct EmuDim3 {
  unsigned x, y, z;
};
inline thread_local EmuDim3 threadIdx, blockIdx;
inline EmuDim3 blockDim, gridDim;
inline std::barrier<>* emu_block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> emu_warp_barriers;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline double __longlong_as_double(long long v) {
  double d;
  std::memcpy(&d, &v, sizeof d);
  return d;
}
#define __restrict__ __restrict

inline unsigned atomicOr(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_or(v); }

// Every lane of the warp must call it (as on the GPU with a full mask).
template <class T>
T __shfl_sync(unsigned, T v, int lane) {
  static T slots[32][32];
  const unsigned w = threadIdx.x / 32;
  slots[w][threadIdx.x % 32] = v;
  emu_warp_barriers[w]->arrive_and_wait();
  const T r = slots[w][lane];
  emu_warp_barriers[w]->arrive_and_wait();
  return r;
}

// Every lane of the warp must call it: bit l = lane l's predicate.
inline unsigned __ballot_sync(unsigned, int pred) {
  static int slots[32][32];
  const unsigned w = threadIdx.x / 32;
  slots[w][threadIdx.x % 32] = pred != 0;
  emu_warp_barriers[w]->arrive_and_wait();
  unsigned r = 0;
  for (int l = 0; l < 32; ++l) r |= static_cast<unsigned>(slots[w][l]) << l;
  emu_warp_barriers[w]->arrive_and_wait();
  return r;
}

// The 16-byte vector types and the write-back store of the packet paths.
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
template <class V>
inline void __stwb(V* p, V v) { *p = v; }

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  return __shfl_sync(mask, v, static_cast<int>(threadIdx.x % 32) ^ lane_mask);
}

// kernel<<<(gx, gy), bx>>> as emu_launch(gx, gy, bx, [&] { kernel(args...); }).
template <class F>
void emu_launch(unsigned gx, unsigned gy, unsigned bx, F f) {
  gridDim = {gx, gy, 1};
  blockDim = {bx, 1, 1};
  for (unsigned by = 0; by < gy; ++by) {
    for (unsigned b = 0; b < gx; ++b) {
      std::barrier<> bar(bx);
      emu_block_barrier = &bar;
      emu_warp_barriers.clear();
      for (unsigned w = 0; w < (bx + 31) / 32; ++w) emu_warp_barriers.emplace_back(new std::barrier<>(32));
      std::vector<std::thread> threads;
      for (unsigned t = 0; t < bx; ++t)
        threads.emplace_back([&, t] {
          threadIdx = {t, 0, 0};
          blockIdx = {b, by, 0};
          f();
        });
      for (auto& t : threads) t.join();
    }
  }
}
