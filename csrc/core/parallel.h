// The one thread pool. Work is split into contiguous chunks whose boundaries depend only on the
// problem size and the thread count; every kernel computes each element (or each fixed reduction
// block) the same way whatever chunk it falls in, so results are bit-identical for any count.
#pragma once

#include <cstdint>
#include <utility>

namespace fastnn {

// Elements per task: below this an array stays on the calling thread.
constexpr int64_t kGrainElements = 32768;

int num_threads();
// n >= 1. Takes effect on the next parallel region.
void set_num_threads(int n);
// The cores this process may use (sched_getaffinity), at least 1.
int default_num_threads();

using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
void parallel_for_impl(int64_t n, int64_t grain, int64_t align, RangeFn fn, void* ctx);

// Calls f(begin, end) over [0, n) in chunks of at least `grain` items whose starts are multiples
// of `align` (so that chunks start on a cache line). Runs inline when one chunk suffices, when
// called from inside a parallel region, or when another thread holds the pool.
template <class F>
void parallel_for(int64_t n, int64_t grain, int64_t align, F&& f) {
  using Fn = std::remove_reference_t<F>;
  parallel_for_impl(
      n, grain, align,
      [](void* ctx, int64_t b, int64_t e) { (*static_cast<Fn*>(ctx))(b, e); },
      const_cast<void*>(static_cast<const void*>(&f)));
}

}  // namespace fastnn
