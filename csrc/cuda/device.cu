// The CUDA device layer (see device.h): error checks, device queries, the caching allocator.
#include "cuda/device.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "cuda/cublaslt.h"

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

DriverInfo driver_info() {
  DriverInfo d{0, 0, "ok", ""};
  cudaRuntimeGetVersion(&d.runtime_version);  // the runtime linked in (static): never fails
  const cudaError_t e = cudaDriverGetVersion(&d.driver_version);  // 0 when no driver is installed
  cudaGetLastError();
  const int n = device_count();
  if (e != cudaSuccess || d.driver_version == 0) {
    d.state = "no driver";
    d.detail = "no NVIDIA driver is installed (libcuda.so.1 was not found)";
  } else if (init_error().find("InsufficientDriver") != std::string::npos ||
             d.driver_version / 1000 < d.runtime_version / 1000) {  // minor versions are compatible
    d.state = "driver too old";
    d.detail = "the NVIDIA driver supports CUDA " + std::to_string(d.driver_version / 1000) + "." +
               std::to_string(d.driver_version % 1000 / 10) + " but fastnn was built with CUDA " +
               std::to_string(d.runtime_version / 1000) + "." + std::to_string(d.runtime_version % 1000 / 10) +
               ": update the driver";
  } else if (n == 0) {
    d.state = init_error().find("NoDevice") != std::string::npos ? "no device" : "error";
    d.detail = init_error();
  }
  return d;
}

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

// ---- streams ------------------------------------------------------------------------------------

namespace {
thread_local uintptr_t t_current_stream = 0;

void require_gpu() {
  if (device_count() == 0) throw std::runtime_error("CUDA: no GPU available (" + init_error() + ")");
}

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
}  // namespace

uintptr_t current_stream() { return t_current_stream; }

void set_current_stream(uintptr_t stream) {
  if (stream != 0) require_gpu();
  t_current_stream = stream;
}

uintptr_t stream_create(int priority) {
  require_gpu();
  int least = 0, greatest = 0;
  FASTNN_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  // CUDA's priorities are "lower number = higher priority": greatest <= p <= least.
  const int p = std::min(least, std::max(greatest, priority));
  cudaStream_t s = nullptr;
  FASTNN_CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, p));
  return reinterpret_cast<uintptr_t>(s);
}

void stream_destroy(uintptr_t stream) {
  require_gpu();
  if (stream == 0) throw std::invalid_argument("stream_destroy: the legacy default stream (0) cannot be destroyed");
  if (t_current_stream == stream) t_current_stream = 0;
  FASTNN_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream)));  // (its GEMMs are done with their workspace)
  release_stream(stream);
  FASTNN_CUDA_CHECK(cudaStreamDestroy(as_stream(stream)));
}

void stream_synchronize(uintptr_t stream) {
  require_gpu();
  FASTNN_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream)));
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
  uintptr_t stream;  // the stream it was allocated on
  uint64_t pool;     // 0: the shared cache; else the capture pool it belongs to
};

// A cached block; `event` (when not null) was recorded where the block was freed: until it has
// completed, only the block's own stream may take it.
struct FreeBlock {
  void* p;
  uintptr_t stream;
  cudaEvent_t event;
};

struct Allocator {
  std::mutex mu;
  std::unordered_map<void*, Block> live;
  // key: (pool, (device << 48) | size class); size classes stay below 2^48 bytes.
  std::map<std::pair<uint64_t, uint64_t>, std::vector<FreeBlock>> free_lists;
  size_t cached = 0, allocated = 0, limit = SIZE_MAX;
  uint64_t next_pool = 1;
  std::unordered_map<uintptr_t, uint64_t> capturing;  // capturing stream -> its pool
  std::unordered_map<uintptr_t, uint64_t> graph_pool;  // graph exec -> its pool
  std::unordered_map<uint64_t, uintptr_t> pool_last_stream;  // pool -> stream of the last replay

  static uint64_t key(int device, size_t bytes) { return (uint64_t(device) << 48) | uint64_t(bytes); }

  // Frees cached blocks of the shared pool (device < 0: all devices) until `keep` bytes are left;
  // never while a capture runs (cudaFree would break it). Caller holds mu.
  size_t release(int device, size_t keep = 0) {
    if (!capturing.empty()) return 0;
    size_t freed = 0;
    int current = -1;
    cudaGetDevice(&current);
    for (auto it = free_lists.begin(); it != free_lists.end() && cached > keep;) {
      const int d = static_cast<int>(it->first.second >> 48);
      if (it->first.first != 0 || (device >= 0 && d != device)) {
        ++it;
        continue;
      }
      const size_t bytes = static_cast<size_t>(it->first.second & ((uint64_t(1) << 48) - 1));
      cudaSetDevice(d);
      auto& v = it->second;
      while (!v.empty() && cached > keep) {
        FreeBlock f = v.back();
        v.pop_back();
        if (f.event != nullptr) {
          cudaEventSynchronize(f.event);
          cudaEventDestroy(f.event);
        }
        cudaFree(f.p);
        freed += bytes;
        cached -= bytes;
      }
      it = v.empty() ? free_lists.erase(it) : std::next(it);
    }
    if (current >= 0) cudaSetDevice(current);
    cudaGetLastError();
    return freed;
  }

  // A cached block of this size class that `stream` may use now, or null. Caller holds mu.
  void* take(uint64_t pool, int device, size_t sz, uintptr_t stream) {
    auto it = free_lists.find({pool, key(device, sz)});
    if (it == free_lists.end()) return nullptr;
    auto& v = it->second;
    for (size_t i = v.size(); i-- > 0;) {
      FreeBlock& f = v[i];
      bool ok = f.stream == stream && f.event == nullptr;
      if (!ok && f.event != nullptr) {
        const cudaError_t q = cudaEventQuery(f.event);
        if (q == cudaSuccess) {
          cudaEventDestroy(f.event);
          f.event = nullptr;
          ok = true;
        } else {
          cudaGetLastError();  // cudaErrorNotReady
        }
      }
      if (!ok && pool != 0) ok = true;  // inside one graph, the capture's stream order protects it
      if (ok) {
        void* p = f.p;
        v.erase(v.begin() + static_cast<std::ptrdiff_t>(i));
        cached -= sz;
        return p;
      }
    }
    return nullptr;
  }
};

// Never destroyed: blocks may be freed by Python objects that die after static destructors run.
Allocator& allocator() {
  static Allocator* a = new Allocator();
  return *a;
}

}  // namespace

void* device_malloc(size_t bytes) {
  require_gpu();
  if (bytes >= (size_t(1) << 47))
    throw std::runtime_error("CUDA: allocation of " + std::to_string(bytes) + " bytes is too large");
  const size_t sz = size_class(bytes);
  const int dev = get_device();
  const uintptr_t stream = t_current_stream;
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  auto cap = a.capturing.find(stream);
  const uint64_t pool = cap == a.capturing.end() ? 0 : cap->second;
  void* p = a.take(pool, dev, sz, stream);
  if (p == nullptr) {
    // cudaMalloc is refused as "unsafe" while this thread captures (thread-local capture mode);
    // it does not touch the captured stream, so relax the mode around it (as PyTorch does).
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    cudaThreadExchangeStreamCaptureMode(&mode);
    cudaError_t err = cudaMalloc(&p, sz);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      a.release(dev);
      err = cudaMalloc(&p, sz);
    }
    cudaThreadExchangeStreamCaptureMode(&mode);
    if (err != cudaSuccess) {
      cudaGetLastError();
      check(err, ("cudaMalloc(" + std::to_string(bytes) + " bytes)").c_str());
    }
  }
  a.live.emplace(p, Block{sz, dev, stream, pool});
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
  FreeBlock f{p, b.stream, nullptr};
  const uintptr_t now = t_current_stream;
  const bool in_capture = a.capturing.count(now) != 0 || a.capturing.count(b.stream) != 0;
  if (b.pool == 0 && now != b.stream && !in_capture) {
    // Freed from another stream: the block's stream is made to wait for the freeing stream, and the
    // event recorded after that on the block's stream completes once both have passed the free.
    cudaEvent_t ev = nullptr;
    if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) == cudaSuccess) {
      cudaEvent_t ev_now = nullptr;
      if (cudaEventCreateWithFlags(&ev_now, cudaEventDisableTiming) == cudaSuccess &&
          cudaEventRecord(ev_now, as_stream(now)) == cudaSuccess &&
          cudaStreamWaitEvent(as_stream(b.stream), ev_now, 0) == cudaSuccess &&
          cudaEventRecord(ev, as_stream(b.stream)) == cudaSuccess) {
        f.event = ev;  // completes once the block's stream has also passed the free
      } else {
        cudaEventDestroy(ev);
        cudaStreamSynchronize(as_stream(now));
        cudaStreamSynchronize(as_stream(b.stream));
      }
      if (ev_now != nullptr) cudaEventDestroy(ev_now);  // deferred by CUDA until it completes
      cudaGetLastError();
    }
  }
  // A capture pool's block (freed during or after its capture) stays in that pool: later replays of
  // the graph may still use it; graph_destroy hands the pool to the shared cache.
  // A block freed while this thread captures may be used by every replay of that graph: it joins
  // the capture's pool (graph_destroy returns it to the shared cache).
  uint64_t pool = b.pool;
  const auto cap = a.capturing.find(now);
  if (pool == 0 && cap != a.capturing.end()) pool = cap->second;
  a.free_lists[{pool, Allocator::key(b.device, b.bytes)}].push_back(f);
  a.cached += b.bytes;
  if (a.cached > a.limit) a.release(-1, a.limit);
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

void set_cache_limit(size_t bytes) {
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  a.limit = bytes;
  if (a.cached > a.limit) a.release(-1, a.limit);
}

// ---- graphs ------------------------------------------------------------------------------------

void graph_capture_begin(uintptr_t stream) {
  if (stream == 0 || stream == 1 || stream == 2)
    throw std::invalid_argument(
        "graph capture: the legacy default stream cannot be captured; capture on a stream of your own "
        "(fastnn.cuda.Stream())");
  require_gpu();
  Allocator& a = allocator();
  {
    std::lock_guard<std::mutex> lock(a.mu);
    if (a.capturing.count(stream) != 0) throw std::runtime_error("graph capture: this stream is already capturing");
    a.capturing[stream] = a.next_pool++;
  }
  const cudaError_t err = cudaStreamBeginCapture(as_stream(stream), cudaStreamCaptureModeThreadLocal);
  if (err != cudaSuccess) {
    std::lock_guard<std::mutex> lock(a.mu);
    a.capturing.erase(stream);
    cudaGetLastError();
    check(err, "cudaStreamBeginCapture");
  }
}

uintptr_t graph_capture_end(uintptr_t stream) {
  require_gpu();
  Allocator& a = allocator();
  uint64_t pool = 0;
  {
    std::lock_guard<std::mutex> lock(a.mu);
    auto it = a.capturing.find(stream);
    if (it == a.capturing.end()) throw std::runtime_error("graph_capture_end: no capture is in progress on this stream");
    pool = it->second;
    a.capturing.erase(it);
  }
  cudaGraph_t g = nullptr;
  cudaError_t err = cudaStreamEndCapture(as_stream(stream), &g);
  cudaGraphExec_t exec = nullptr;
  if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, g, 0);
  if (g != nullptr) cudaGraphDestroy(g);
  if (err != cudaSuccess) {
    cudaGetLastError();
    check(err, "graph capture (a launch inside it failed or was not capturable)");
  }
  std::lock_guard<std::mutex> lock(a.mu);
  a.graph_pool[reinterpret_cast<uintptr_t>(exec)] = pool;
  return reinterpret_cast<uintptr_t>(exec);
}

void graph_replay(uintptr_t graph, uintptr_t stream) {
  require_gpu();
  if (graph == 0) throw std::invalid_argument("graph_replay: null graph");
  {
    Allocator& a = allocator();
    std::lock_guard<std::mutex> lock(a.mu);
    auto it = a.graph_pool.find(graph);
    if (it == a.graph_pool.end()) throw std::invalid_argument("graph_replay: not a live graph of graph_capture_end");
    a.pool_last_stream[it->second] = stream;
  }
  FASTNN_CUDA_CHECK(cudaGraphLaunch(reinterpret_cast<cudaGraphExec_t>(graph), as_stream(stream)));
}

void graph_destroy(uintptr_t graph) {
  require_gpu();
  Allocator& a = allocator();
  std::lock_guard<std::mutex> lock(a.mu);
  auto it = a.graph_pool.find(graph);
  if (it == a.graph_pool.end()) throw std::invalid_argument("graph_destroy: not a live graph of graph_capture_end");
  const uint64_t pool = it->second;
  a.graph_pool.erase(it);
  // The pool's cached blocks join the shared cache once the last replay has finished with them.
  const uintptr_t last = a.pool_last_stream.count(pool) ? a.pool_last_stream[pool] : 0;
  a.pool_last_stream.erase(pool);
  for (auto fl = a.free_lists.begin(); fl != a.free_lists.end();) {
    if (fl->first.first != pool) {
      ++fl;
      continue;
    }
    auto& dst = a.free_lists[{0, fl->first.second}];
    for (FreeBlock f : fl->second) {
      if (f.event == nullptr) {
        cudaEvent_t ev = nullptr;
        if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) == cudaSuccess &&
            cudaEventRecord(ev, as_stream(last)) == cudaSuccess)
          f.event = ev;
        else
          cudaStreamSynchronize(as_stream(last));
        cudaGetLastError();
      }
      dst.push_back(f);
    }
    fl = a.free_lists.erase(fl);
  }
  // Live blocks of the pool (the graph's outputs) return to the shared cache when freed.
  for (auto& kv : a.live)
    if (kv.second.pool == pool) kv.second.pool = 0;
  FASTNN_CUDA_CHECK(cudaGraphExecDestroy(reinterpret_cast<cudaGraphExec_t>(graph)));
}

// ---- copies and synchronization ------------------------------------------------------------------

void memcpy_htod(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  FASTNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, as_stream(t_current_stream)));
  FASTNN_CUDA_CHECK(cudaStreamSynchronize(as_stream(t_current_stream)));
}

void memcpy_dtoh(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  FASTNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(t_current_stream)));
  FASTNN_CUDA_CHECK(cudaStreamSynchronize(as_stream(t_current_stream)));
}

void memcpy_dtod(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  FASTNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, as_stream(t_current_stream)));
}

void memset_zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  FASTNN_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, as_stream(t_current_stream)));
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

void stream_wait(uintptr_t waiter, uintptr_t waited) {
  if (waiter == waited) return;  // (a stream is ordered after itself: nothing to do, GPU or not)
  require_gpu();
  stream_wait(as_stream(waiter), as_stream(waited));
}

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
