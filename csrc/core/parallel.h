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
// 1 <= n <= max_num_threads() (clamped). Takes effect on the next parallel region; workers are
// started only when a region has that many chunks of work.
void set_num_threads(int n);
// The cores this process may use (sched_getaffinity), at least 1.
int default_num_threads();
// 4 * max(1024, default_num_threads()): beyond any machine's useful count (oversubscribing a
// 256-CPU container 16-fold is still accepted), yet far below the operating system's thread
// limits (Linux's default threads-max is in the 10^5 range, each thread reserving an 8 MiB stack),
// so a typo such as 30000 or 10**6 is refused instead of exhausting them.
int max_num_threads();
// Worker threads running now (the caller of a region is not counted).
int started_threads();
// Called (from the thread that runs the region, with no lock of the pool held) when a worker
// thread could not be created: the region runs on the threads that exist. One message per pool.
using ThreadFailureHandler = void (*)(const char* message);
void set_thread_failure_handler(ThreadFailureHandler h);

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
