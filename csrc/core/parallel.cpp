#include "core/parallel.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace fastnn {

namespace {

thread_local bool t_in_parallel = false;

// Persistent workers. A region publishes (fn, ctx, chunking) and bumps `generation_`; workers
// spin briefly, then sleep on a condition variable. Tasks are claimed with an atomic counter, the
// caller takes part, and the last task to finish wakes the caller.
class Pool {
 public:
  Pool() = default;
  // Starts workers until `threads` run (the caller is one); false when the OS refused one
  // (std::system_error: EAGAIN at the thread or memory limit), the pool then keeps what it has.
  bool grow(int threads) {
    while (static_cast<int>(workers_.size()) + 1 < threads) {
      try {
        workers_.emplace_back([this] { worker_loop(); });
      } catch (const std::system_error&) {
        return false;
      }
    }
    return true;
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_start_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int ntasks, int64_t n, int64_t chunk, RangeFn fn, void* ctx) {
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    chunk_ = chunk;
    remaining_.store(ntasks, std::memory_order_relaxed);
    region_ = (region_ + 1) & 0xFFFFFF;
    // Publishing the claim word releases the region's parameters to whoever claims a task.
    claim_.store((region_ << 40) | (static_cast<uint64_t>(ntasks) << 20), std::memory_order_release);
    {
      std::lock_guard<std::mutex> lk(mu_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_start_.notify_all();
    t_in_parallel = true;
    work();
    t_in_parallel = false;
    // Wait for the workers' tasks: spin first (regions are short), then sleep.
    bool done = false;
    for (int spin = 0; spin < 20000 && !done; ++spin) {
      done = remaining_.load(std::memory_order_acquire) == 0;
      if (!done) cpu_relax();
    }
    if (!done) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_done_.wait(lk, [this] { return remaining_.load(std::memory_order_acquire) == 0; });
    }
    // A task that threw (std::bad_alloc of a packing buffer, say): every task has finished or
    // been skipped, so nothing uses ctx any more; the first exception goes to the caller.
    if (failed_.load(std::memory_order_acquire)) {
      std::exception_ptr e = error_;
      error_ = nullptr;
      failed_.store(false, std::memory_order_relaxed);
      std::rethrow_exception(e);
    }
  }

 private:
  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  // Claims tasks until the current region has none left. The claim word packs
  // (region id: 24 bits | task count: 20 bits | next task: 20 bits), so a worker that wakes late
  // can never take a task of a region it did not see published, nor read a stale task count.
  // A region's parameters stay valid while any of its tasks is unfinished.
  void work() {
    for (;;) {
      uint64_t c = claim_.load(std::memory_order_acquire);
      for (;;) {
        if ((c & 0xFFFFF) >= ((c >> 20) & 0xFFFFF)) return;
        if (claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel, std::memory_order_acquire)) break;
      }
      int64_t t = static_cast<int64_t>(c & 0xFFFFF);
      int64_t b = t * chunk_, e = b + chunk_ < n_ ? b + chunk_ : n_;
      if (!failed_.load(std::memory_order_acquire)) {  // (after a failure the rest are skipped)
        try {
          fn_(ctx_, b, e);
        } catch (...) {  // kept for the caller: an exception must not leave a worker (terminate)
          std::lock_guard<std::mutex> lk(mu_);
          if (!failed_.load(std::memory_order_relaxed)) {
            error_ = std::current_exception();
            failed_.store(true, std::memory_order_release);
          }
        }
      }
      if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);
        cv_done_.notify_one();
      }
    }
  }

  void worker_loop() {
    t_in_parallel = true;
    uint64_t seen = 0;
    for (;;) {
      uint64_t g = generation_.load(std::memory_order_acquire);
      for (int spin = 0; g == seen && spin < 20000; ++spin) {
        cpu_relax();
        g = generation_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_start_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        g = generation_.load(std::memory_order_acquire);
      }
      seen = g;
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (stop_) return;
      }
      work();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;
  RangeFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0, chunk_ = 0;
  uint64_t region_ = 0;
  std::atomic<uint64_t> claim_{0};
  std::atomic<int> remaining_{0};
  std::atomic<bool> failed_{false};  // a task of this region threw: error_ holds the first exception
  std::exception_ptr error_;
};

std::mutex g_pool_mu;          // held for the duration of a region: one region at a time
Pool* g_pool = nullptr;        // created lazily, grown to the chunks a region has (<= g_threads)
std::atomic<int> g_threads{0};  // 0 = not yet set: use default_num_threads()
std::atomic<int> g_started{0};  // workers of g_pool
bool g_failure_reported = false;  // one message per pool (guarded by g_pool_mu)
std::atomic<ThreadFailureHandler> g_failure_handler{nullptr};

void after_fork_in_child() {
  // The workers do not exist in the child: forget the pool (leaked, not joined) and the lock.
  new (&g_pool_mu) std::mutex();
  g_pool = nullptr;
  g_started.store(0, std::memory_order_relaxed);
}

struct ForkHandler {
  ForkHandler() { pthread_atfork(nullptr, nullptr, after_fork_in_child); }
} g_fork_handler;

}  // namespace

int default_num_threads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

int max_num_threads() {
  const int cpus = default_num_threads();
  return 4 * (cpus > 1024 ? cpus : 1024);
}

int started_threads() { return g_started.load(std::memory_order_relaxed); }

void set_thread_failure_handler(ThreadFailureHandler h) { g_failure_handler.store(h); }

int num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : default_num_threads();
}

void set_num_threads(int n) {
  if (n < 1) n = 1;
  if (n > max_num_threads()) n = max_num_threads();
  std::lock_guard<std::mutex> lk(g_pool_mu);
  g_threads.store(n, std::memory_order_relaxed);
  if (g_pool && g_pool->threads() > n) {  // fewer threads: stop the pool; a larger count grows it
    delete g_pool;
    g_pool = nullptr;
    g_started.store(0, std::memory_order_relaxed);
  }
}

void parallel_for_impl(int64_t n, int64_t grain, int64_t align, RangeFn fn, void* ctx) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  if (align < 1) align = 1;
  int64_t nt = num_threads();
  int64_t max_tasks = (n + grain - 1) / grain;
  if (nt > max_tasks) nt = max_tasks;
  if (nt <= 1 || t_in_parallel) {
    fn(ctx, 0, n);
    return;
  }
  std::unique_lock<std::mutex> lk(g_pool_mu, std::try_to_lock);
  if (!lk.owns_lock()) {  // another thread's region is running: do this one inline
    fn(ctx, 0, n);
    return;
  }
  int64_t chunk = (n + nt - 1) / nt;
  chunk = (chunk + align - 1) / align * align;
  const int ntasks = static_cast<int>((n + chunk - 1) / chunk);
  // Never more workers than this region has chunks; a later, larger region grows the pool.
  if (!g_pool) {
    g_pool = new Pool();
    g_failure_reported = false;
  }
  std::string failure;
  if (g_pool->threads() < ntasks && !g_pool->grow(ntasks) && !g_failure_reported) {
    g_failure_reported = true;
    failure = "fastnn: could not start more than " + std::to_string(g_pool->threads() - 1) +
              " worker threads (the operating system refused one); running on " +
              std::to_string(g_pool->threads()) + " threads";
  }
  g_started.store(g_pool->threads() - 1, std::memory_order_relaxed);
  // Tasks are claimed from a counter: with fewer threads than tasks each thread takes several.
  g_pool->run(ntasks, n, chunk, fn, ctx);
  lk.unlock();
  if (!failure.empty()) {
    if (auto h = g_failure_handler.load()) h(failure.c_str());
  }
}

}  // namespace fastnn
