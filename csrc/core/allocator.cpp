#include "core/allocator.h"

#include <pthread.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>

namespace fastnn {

namespace {

constexpr size_t kHuge = size_t(2) << 20;
constexpr size_t kHugeFrom = size_t(1) << 20;  // blocks this large get huge-page alignment
constexpr size_t kStep = size_t(64) << 10;      // smaller cached blocks round up to 64 KiB

size_t round_block(size_t bytes) {
  return bytes >= kHugeFrom ? (bytes + kHuge - 1) / kHuge * kHuge : (bytes + kStep - 1) / kStep * kStep;
}

struct Cache {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;  // rounded size -> block
  size_t cached = 0;
  size_t limit = size_t(1) << 30;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: arrays may outlive static destruction
  return *c;
}

// fork() while another thread is inside a kernel: the child has only the forking thread, so a
// cache lock held by any other would never be released there. The lock is taken around the fork
// (the cache is consistent in the child) and released on both sides.
void lock_for_fork() { cache().mu.lock(); }
void unlock_after_fork() { cache().mu.unlock(); }

struct ForkHandler {
  ForkHandler() { pthread_atfork(lock_for_fork, unlock_after_fork, unlock_after_fork); }
} g_fork_handler;

void* map_block(size_t size) {
  if (size < kHuge) {  // a 64 KiB multiple: page alignment is all it needs
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return p;
  }
  // Over-map by 2 MiB and trim so the block is 2 MiB-aligned (a huge page can back it).
  size_t span = size + kHuge;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = (start + kHuge - 1) & ~(uintptr_t)(kHuge - 1);
  if (aligned > start) munmap(raw, aligned - start);
  uintptr_t end = start + span, block_end = aligned + size;
  if (end > block_end) munmap(reinterpret_cast<void*>(block_end), end - block_end);
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);
#endif
  return reinterpret_cast<void*>(aligned);
}

}  // namespace

void* host_alloc(size_t bytes) {
  if (bytes < kCachedAllocMin) {
    const size_t n = (bytes + 63) / 64 * 64 + 64;
    void* p = std::aligned_alloc(64, n);
    if (!p && host_empty_cache()) p = std::aligned_alloc(64, n);  // (as below: the cache's blocks first)
    if (!p) throw std::bad_alloc();
    return p;
  }
  size_t size = round_block(bytes);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lk(c.mu);
    auto it = c.free_blocks.find(size);
    if (it != c.free_blocks.end()) {
      void* p = it->second;
      c.free_blocks.erase(it);
      c.cached -= size;
      return p;
    }
  }
  try {
    return map_block(size);
  } catch (const std::bad_alloc&) {  // the cache's free blocks (other sizes) are the caller's memory too:
    if (!host_empty_cache()) throw;  // given back, one more try (PyTorch's caching allocator does the same)
    return map_block(size);
  }
}

void host_free(void* p, size_t bytes) {
  if (!p) return;
  if (bytes < kCachedAllocMin) {
    std::free(p);
    return;
  }
  size_t size = round_block(bytes);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lk(c.mu);
    if (c.cached + size <= c.limit) {
      c.free_blocks.emplace(size, p);
      c.cached += size;
      return;
    }
  }
  munmap(p, size);
}

size_t host_empty_cache() {
  Cache& c = cache();
  std::multimap<size_t, void*> blocks;
  size_t released;
  {
    std::lock_guard<std::mutex> lk(c.mu);
    blocks.swap(c.free_blocks);
    released = c.cached;
    c.cached = 0;
  }
  for (auto& kv : blocks) munmap(kv.second, kv.first);
  return released;
}

size_t host_cached_bytes() {
  std::lock_guard<std::mutex> lk(cache().mu);
  return cache().cached;
}

size_t host_cache_limit() {
  std::lock_guard<std::mutex> lk(cache().mu);
  return cache().limit;
}

void set_host_cache_limit(size_t bytes) {
  Cache& c = cache();
  std::multimap<size_t, void*> evicted;
  {
    std::lock_guard<std::mutex> lk(c.mu);
    c.limit = bytes;
    while (c.cached > c.limit && !c.free_blocks.empty()) {
      auto it = std::prev(c.free_blocks.end());  // largest first
      c.cached -= it->first;
      evicted.insert(*it);
      c.free_blocks.erase(it);
    }
  }
  for (auto& kv : evicted) munmap(kv.second, kv.first);
}

}  // namespace fastnn
