// The CUDA device layer: error checks, device queries, streams and graphs, a caching device
// allocator and copies. Every launch goes to the calling thread's current stream (current_stream(),
// by default the legacy default stream 0, which orders itself with every blocking stream of the
// process: PyTorch's and CuPy's default streams included).
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

// Driver and runtime versions (CUDA's 1000 * major + 10 * minor; driver 0 = no NVIDIA driver) and a
// one-word state: "ok", "no driver", "driver too old" (older than the runtime fastnn was built
// with), "no device" or "error".
struct DriverInfo {
  int driver_version, runtime_version;
  std::string state, detail;
};
DriverInfo driver_info();

// ---- streams and graphs (handles are cudaStream_t / cudaGraphExec_t as integers) ----------------
// The current stream is per thread; 0 is the legacy default stream.
uintptr_t current_stream();
void set_current_stream(uintptr_t stream);
uintptr_t stream_create(int priority);  // non-blocking; priority clamped to the device's range
void stream_destroy(uintptr_t stream);
void stream_synchronize(uintptr_t stream);
// `waiter` waits for what is queued on `waited` now (an event in between).
void stream_wait(uintptr_t waiter, uintptr_t waited);
// Capture of everything launched on `stream` (not the legacy stream: it cannot be captured);
// allocations made while a capture is in progress come from a private pool that the graph keeps.
void graph_capture_begin(uintptr_t stream);
uintptr_t graph_capture_end(uintptr_t stream);  // the instantiated graph
void graph_replay(uintptr_t graph, uintptr_t stream);
void graph_destroy(uintptr_t graph);

// Caching allocator for the current device: freed blocks are kept per (device, size class) and
// handed out again without cudaMalloc/cudaFree (each of which costs tens of microseconds and
// cudaFree synchronizes the device). Blocks are at least 256-byte aligned, and a 0-byte request
// still returns a valid block. Stream-aware: a block remembers the stream it was allocated on; freed
// on that stream it is handed out again at once to that stream (later work there is ordered after
// the earlier use); freed from another stream, or asked for by another stream, it goes out only
// after an event recorded at the free has completed. While a capture is in progress, allocations
// and frees go to the capture's private pool (nothing of it is reused outside the graph while the
// graph lives). On out-of-memory the device's cached blocks are released and the allocation
// retried once; cached bytes above set_cache_limit() are released at the next free.
void* device_malloc(size_t bytes);
void device_free(void* p);
size_t empty_cache();   // returns the cached bytes released (all devices)
size_t cached_bytes();  // free bytes held in the cache (all devices)
size_t allocated_bytes();  // bytes in live blocks (all devices)
void set_cache_limit(size_t bytes);  // SIZE_MAX (the default): no cap

// Copies; the host side must be valid for `bytes`. H<->D copies are synchronous with the host
// and ordered after earlier work on the current stream; D->D is asynchronous on it.
void memcpy_htod(void* dst, const void* src, size_t bytes);
void memcpy_dtoh(void* dst, const void* src, size_t bytes);
void memcpy_dtod(void* dst, const void* src, size_t bytes);
// Sets `bytes` bytes at dst to zero, asynchronously on the current stream (zero-filled optimizer state).
void memset_zero(void* dst, size_t bytes);
void synchronize();

// Stream interop (stream is a cudaStream_t as an integer; 1 = legacy default, 2 = per-thread
// default). legacy_wait_on(s): later stream-0 work waits for what is queued on s now.
// wait_on_legacy(s): later work on s waits for what is queued on stream 0 now.
void legacy_wait_on(uintptr_t stream);
void wait_on_legacy(uintptr_t stream);

}  // namespace cuda
}  // namespace fastnn
