// The CUDA device layer (see device.h): error checks, device queries, the caching allocator.
#include "cuda/device.h"

#include <cuda_runtime.h>

#include <atomic>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <vector>

namespace fastnn {
namespace cuda {

void check(int err, const char* what) {
  if (err == cudaSuccess) return;
  const auto e = static_cast<cudaError_t>(err);
  throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")");
}

namespace {

std::mutex g_init_mutex;
int g_device_count = -1;  // -1: not queried yet
std::string g_init_error;

void query_devices() {
  std::lock_guard<std::mutex> lock(g_init_mutex);
  if (g_device_count >= 0) return;
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    // No driver (cudaErrorInsufficientDriver), no GPU (cudaErrorNoDevice) or a broken install:
    // all mean "no usable GPU" to the caller; the reason is kept for fastnn.info().
    g_init_error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear it so later calls do not report it again
    n = 0;
  }
  g_device_count = n;
}

}  // namespace

int device_count() {
  query_devices();
  return g_device_count;
}

std::string init_error() {
  query_devices();
  return g_init_error;
}

DeviceProperties device_properties(int index) {
  const int n = device_count();
  if (index < 0 || index >= n)
    throw std::out_of_range("device: expected an index in [0, " + std::to_string(n) + "), got " +
                            std::to_string(index));
  cudaDeviceProp prop;
  FASTNN_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  return DeviceProperties{index, std::string(prop.name), prop.major, prop.minor, prop.totalGlobalMem};
}

int get_device() {
  int d = 0;
  FASTNN_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

void set_device(int index) {
  const int n = device_count();
  if (index < 0 || index >= n)
    throw std::out_of_range("device: expected an index in [0, " + std::to_string(n) + "), got " +
                            std::to_string(index));
  FASTNN_CUDA_CHECK(cudaSetDevice(index));
}

int multiprocessor_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  const int d = get_device();
  if (d >= 0 && d < kMaxDevices) {
    int v = cache[d].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  FASTNN_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, d));
  if (d >= 0 && d < kMaxDevices) cache[d].store(v, std::memory_order_relaxed);
  return v;
}

int pointer_device(uintptr_t ptr) {
  cudaPointerAttributes attr;
  cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) return attr.device;
  return -1;
}

// ---- caching allocator -------------------------------------------------------------------------

namespace {

// Size classes: multiples of 512 bytes up to 1 MiB, of 128 KiB above (at most 1/8 wasted).
size_t size_class(size_t bytes) {
  const size_t small = 512, large = size_t(128) << 10;
  if (bytes == 0) return small;
  if (bytes <= (size_t(1) << 20)) return (bytes + small - 1) / small * small;
  return (bytes + large - 1) / large * large;
}

struct Block {
  size_t bytes;
  int device;
};

struct Allocator {
  std::mutex mu;
  std::unordered_map<void*, Block> live;
  // key: (device << 48) | size class; size classes stay below 2^48 bytes.
  std::unordered_map<uint64_t, std::vector<void*>> free_lists;
  size_t cached = 0, allocated = 0;

  static uint64_t key(int device, size_t bytes) { return (uint64_t(device) << 48) | uint64_t(bytes); }

  // Releases the cached blocks of `device` (all devices if < 0); caller holds mu.
  size_t release(int device) {
    size_t freed = 0;
    int current = -1;
    cudaGetDevice(&current);
    for (auto it = free_lists.begin(); it != free_lists.end();) {
      const int d = static_cast<int>(it->first >> 48);
      if (device >= 0 && d != device) {
        ++it;
        continue;
      }
      const size_t bytes = static_cast<size_t>(it->first & ((uint64_t(1) << 48) - 1));
      cudaSetDevice(d);
      for (void* p : it->second) {
        cudaFree(p);
        freed += bytes;
      }
      it = free_lists.erase(it);
    }
    if (current >= 0) cudaSetDevice(current);
    cudaGetLastError();
    cached -= freed;
    return freed;
  }
};

// Never destroyed: blocks may be freed by Python objects that die after static destructors run.
Allocator& allocator() {
  static Allocator* a = new Allocator();
  return *a;
}

}  // namespace

void* device_malloc(size_t bytes) {
  if (device_count() == 0)
    throw std::runtime_error("CUDA: no GPU available (" + init_error() + ")");
  if (bytes >= (size_t(1) << 47))
    throw std::runtime_error("CUDA: allocation of " + std::to_string(bytes) + " bytes is too large");
  const size_t sz = size_class(bytes);
  const int dev = get_device();
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  auto it = a.free_lists.find(Allocator::key(dev, sz));
  if (it != a.free_lists.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    a.cached -= sz;
    a.live.emplace(p, Block{sz, dev});
    a.allocated += sz;
    return p;
  }
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, sz);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    a.release(dev);
    err = cudaMalloc(&p, sz);
  }
  if (err != cudaSuccess) {
    cudaGetLastError();
    check(err, ("cudaMalloc(" + std::to_string(bytes) + " bytes)").c_str());
  }
  a.live.emplace(p, Block{sz, dev});
  a.allocated += sz;
  return p;
}

void device_free(void* p) {
  if (p == nullptr) return;
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  auto it = a.live.find(p);
  if (it == a.live.end()) throw std::invalid_argument("cuda_free: pointer was not returned by cuda_malloc (or was freed)");
  const Block b = it->second;
  a.live.erase(it);
  a.allocated -= b.bytes;
  a.free_lists[Allocator::key(b.device, b.bytes)].push_back(p);
  a.cached += b.bytes;
}

size_t empty_cache() {
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  if (a.cached == 0) return 0;
  return a.release(-1);
}

size_t cached_bytes() {
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  return a.cached;
}

size_t allocated_bytes() {
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  return a.allocated;
}

// ---- copies and synchronization ------------------------------------------------------------------

void memcpy_htod(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  FASTNN_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void memcpy_dtoh(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  FASTNN_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void memcpy_dtod(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  FASTNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0));
}

void memset_zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  FASTNN_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, 0));
}

void synchronize() { FASTNN_CUDA_CHECK(cudaDeviceSynchronize()); }

namespace {

// `waiter` waits for the work queued on `signaler` now (an event in between; the event is
// destroyed at once, which CUDA defers until it has completed).
void stream_wait(cudaStream_t waiter, cudaStream_t signaler) {
  cudaEvent_t ev;
  FASTNN_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  cudaError_t err = cudaEventRecord(ev, signaler);
  if (err == cudaSuccess) err = cudaStreamWaitEvent(waiter, ev, 0);
  cudaEventDestroy(ev);
  FASTNN_CUDA_CHECK(err);
}

// 0 and 1 name the legacy default stream and 2 the per-thread default stream, which is a
// blocking stream: both are ordered with stream 0 by CUDA itself.
bool implicitly_ordered(uintptr_t stream) { return stream <= 2; }

}  // namespace

void legacy_wait_on(uintptr_t stream) {
  if (implicitly_ordered(stream)) return;
  stream_wait(cudaStreamLegacy, reinterpret_cast<cudaStream_t>(stream));
}

void wait_on_legacy(uintptr_t stream) {
  if (implicitly_ordered(stream)) return;
  stream_wait(reinterpret_cast<cudaStream_t>(stream), cudaStreamLegacy);
}

}  // namespace cuda
}  // namespace fastnn
