// The CUDA device layer: error checks, device queries, a caching device allocator and copies.
// Everything runs on the legacy default stream (stream 0), which orders itself with every
// blocking stream of the process (PyTorch's and CuPy's default streams included), so a result
// written here is visible to the next op of either library without an explicit event.
// This header has no CUDA types: csrc/bindings includes it from plain C++.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace fastnn {
namespace cuda {

// Throws std::runtime_error("<what>: <cudaGetErrorString> (<code name>)") when `err` (a
// cudaError_t) is not cudaSuccess.
void check(int err, const char* what);
#define FASTNN_CUDA_CHECK(call) ::fastnn::cuda::check(static_cast<int>(call), #call)

// Devices visible to this process; 0 (never an exception) when there is no driver or no GPU.
int device_count();
// Why device_count() is 0: the CUDA error string, or "" when it found devices.
std::string init_error();

struct DeviceProperties {
  int index;
  std::string name;
  int major, minor;
  size_t memory_bytes;
};
DeviceProperties device_properties(int index);

int get_device();
void set_device(int index);
int multiprocessor_count();  // of the current device, cached

// Device ordinal owning `ptr` (device or managed memory), or -1 for host / unknown memory.
int pointer_device(uintptr_t ptr);

// Caching allocator for the current device: freed blocks are kept per (device, size class) and
// handed out again without cudaMalloc/cudaFree (each of which costs tens of microseconds and
// cudaFree synchronizes the device). Blocks are at least 256-byte aligned, and a 0-byte request
// still returns a valid block. Reuse is ordered by stream 0: a block freed here may be handed to
// the next launch on stream 0 while earlier stream-0 work still reads it, which is safe.
// On out-of-memory the device's cached blocks are released and the allocation retried once.
void* device_malloc(size_t bytes);
void device_free(void* p);
size_t empty_cache();   // returns the cached bytes released (all devices)
size_t cached_bytes();  // free bytes held in the cache (all devices)
size_t allocated_bytes();  // bytes in live blocks (all devices)

// Copies; the host side must be valid for `bytes`. H<->D copies are synchronous with the host
// and ordered after earlier stream-0 work; D->D is asynchronous on stream 0.
void memcpy_htod(void* dst, const void* src, size_t bytes);
void memcpy_dtoh(void* dst, const void* src, size_t bytes);
void memcpy_dtod(void* dst, const void* src, size_t bytes);
// Sets `bytes` bytes at dst to zero, asynchronously on stream 0 (zero-filled optimizer state).
void memset_zero(void* dst, size_t bytes);
void synchronize();

// Stream interop (stream is a cudaStream_t as an integer; 1 = legacy default, 2 = per-thread
// default). legacy_wait_on(s): later stream-0 work waits for what is queued on s now.
// wait_on_legacy(s): later work on s waits for what is queued on stream 0 now.
void legacy_wait_on(uintptr_t stream);
void wait_on_legacy(uintptr_t stream);

}  // namespace cuda
}  // namespace fastnn
