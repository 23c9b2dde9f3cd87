// A host emulation of the CUDA built-ins the kernel headers use (csrc/cuda/*_kernels.cuh), for
// checking their index math and barrier structure on a machine without a GPU (the
// tests/test_*_cuda_emulated.py files and the fake GPU plugin). Blocks run one after another; the
// threads of a block are fibers (ucontext, each with its own stack) on the calling OS thread, run
// in turn up to their next barrier: __syncthreads waits for every thread of the block, and
// __shfl_sync / __ballot_sync for every lane of the warp. One OS thread, not one per CUDA thread:
// a 256-thread block used to start 256 std::threads per launch, a thread storm on a shared
// machine. A barrier that cannot complete (a thread returned while others wait at __syncthreads,
// or a warp op not reached by every lane) aborts with a message instead of hanging. __shared__
// variables are function statics (one block at a time). The _rn intrinsics are the host's IEEE
// operations (compile with -ffp-contract=off). Not emulated: CUDA's own logf/cosf (the host's libm
// is used), memory-model subtleties beyond the barriers, launch limits.
#pragma once

#include <ucontext.h>

#include <atomic>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

using std::isnan;
using std::max;
using std::min;

struct EmuDim3 {
  unsigned x, y, z;
};
inline thread_local EmuDim3 threadIdx, blockIdx;
inline EmuDim3 blockDim, gridDim;

// The fibers of the running block: state kRun (runnable), kBlock (at __syncthreads), kWarp (at a
// warp op's barrier), kDone (returned).
enum EmuState { kRun, kBlock, kWarp, kDone };
struct EmuFiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  EmuState state = kRun;
};
constexpr size_t kEmuStack = size_t(256) << 10;  // per CUDA thread (pages are touched only as used)
inline std::vector<EmuFiber> emu_fibers;
inline ucontext_t emu_scheduler;
inline unsigned emu_current;
inline void (*emu_body)(void*);
inline void* emu_body_arg;

inline void emu_fiber_main() {
  emu_body(emu_body_arg);
  emu_fibers[emu_current].state = kDone;  // (then uc_link resumes the scheduler)
}

inline void emu_wait(EmuState at) {
  emu_fibers[emu_current].state = at;
  swapcontext(&emu_fibers[emu_current].ctx, &emu_scheduler);
}

[[noreturn]] inline void emu_fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s (block %u,%u)\n", what, blockIdx.x, blockIdx.y);
  std::abort();
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

inline void __syncthreads() { emu_wait(kBlock); }
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
  emu_wait(kWarp);
  const T r = slots[w][lane];
  emu_wait(kWarp);
  return r;
}

// Every lane of the warp must call it: bit l = lane l's predicate.
inline unsigned __ballot_sync(unsigned, int pred) {
  static int slots[32][32];
  const unsigned w = threadIdx.x / 32;
  slots[w][threadIdx.x % 32] = pred != 0;
  emu_wait(kWarp);
  unsigned r = 0;
  for (int l = 0; l < 32; ++l) r |= static_cast<unsigned>(slots[w][l]) << l;
  emu_wait(kWarp);
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
  emu_body = [](void* p) { (*static_cast<F*>(p))(); };
  emu_body_arg = &f;
  if (emu_fibers.size() < bx) emu_fibers.resize(bx);
  for (unsigned t = 0; t < bx; ++t)
    if (!emu_fibers[t].stack) emu_fibers[t].stack.reset(new char[kEmuStack]);
  for (unsigned by = 0; by < gy; ++by) {
    for (unsigned b = 0; b < gx; ++b) {
      blockIdx = {b, by, 0};
      for (unsigned t = 0; t < bx; ++t) {
        EmuFiber& fb = emu_fibers[t];
        getcontext(&fb.ctx);
        fb.ctx.uc_stack.ss_sp = fb.stack.get();
        fb.ctx.uc_stack.ss_size = kEmuStack;
        fb.ctx.uc_link = &emu_scheduler;
        makecontext(&fb.ctx, emu_fiber_main, 0);
        fb.state = kRun;
      }
      for (;;) {
        for (unsigned t = 0; t < bx; ++t) {  // each runnable thread up to its next barrier (or its end)
          if (emu_fibers[t].state != kRun) continue;
          emu_current = t;
          threadIdx = {t, 0, 0};
          swapcontext(&emu_scheduler, &emu_fibers[t].ctx);
        }
        unsigned done = 0, at_block = 0;
        bool released = false;
        for (unsigned w0 = 0; w0 < bx; w0 += 32) {  // a warp whose every lane waits at its op goes on
          const unsigned w1 = std::min(w0 + 32, bx);
          unsigned at_warp = 0;
          for (unsigned t = w0; t < w1; ++t) at_warp += emu_fibers[t].state == kWarp;
          if (at_warp == w1 - w0) {
            for (unsigned t = w0; t < w1; ++t) emu_fibers[t].state = kRun;
            released = true;
          }
        }
        if (released) continue;
        for (unsigned t = 0; t < bx; ++t) {
          done += emu_fibers[t].state == kDone;
          at_block += emu_fibers[t].state == kBlock;
        }
        if (done == bx) break;
        if (at_block != bx) emu_fail(done ? "__syncthreads: a thread of the block returned while others wait"
                                          : "a warp op (__shfl_sync/__ballot_sync) not reached by every lane");
        for (unsigned t = 0; t < bx; ++t) emu_fibers[t].state = kRun;
      }
    }
  }
}
