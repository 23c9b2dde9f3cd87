// Host memory for large outputs. A fresh 64 MiB array from malloc is a new mmap every time: the
// kernel faults in and zeroes 16K pages on first touch, which costs more than the activation
// itself. Freed large blocks are kept (up to a byte limit) and handed out again, so a training
// loop that allocates the same shapes every step touches warm pages. Blocks of 1 MiB and more are
// 2 MiB-aligned and advised for transparent huge pages so even the first touch takes few faults;
// from 64 KiB they come in 64 KiB steps (a training step's gradients and activations at batch
// 128 are a few hundred KiB: glibc gives those back to the OS on free and faults them in again).
#pragma once

#include <cstddef>

namespace fastnn {

// Blocks at least this large go through the cache; smaller requests should use the caller's
// ordinary allocator (NumPy's is fast there).
constexpr size_t kCachedAllocMin = size_t(64) << 10;

// Returns memory aligned to 64 bytes (a page for cached sizes, 2 MiB from 1 MiB); throws
// std::bad_alloc on failure.
void* host_alloc(size_t bytes);
void host_free(void* p, size_t bytes);

// Releases every cached block to the OS; returns the bytes released.
size_t host_empty_cache();
size_t host_cached_bytes();
size_t host_cache_limit();
void set_host_cache_limit(size_t bytes);

}  // namespace fastnn
