// Launch helpers shared by the .cu files: error check after a launch and grid sizing for
// grid-stride kernels (one full wave: SMs x the kernel's occupancy, cached per kernel and device).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "cuda/device.h"

namespace fastnn {
namespace cuda {
namespace launch {

// The stream every launch of this thread goes to (device.h's current_stream; 0 = legacy default).
inline cudaStream_t stream() { return reinterpret_cast<cudaStream_t>(current_stream()); }

inline void check_launch(const char* what) { check(static_cast<int>(cudaGetLastError()), what); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks resident at once on the current device for a Threads-wide kernel: the size of one full
// wave of a grid-stride kernel (a partial second wave would leave SMs idle at the end).
template <int Threads, class Kernel>
int64_t full_wave(Kernel kernel) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int> per_sm;  // (kernel, device) -> blocks per SM
  const int dev = get_device();
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), dev);
  int blocks = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = per_sm.find(key);
    if (it != per_sm.end()) blocks = it->second;
  }
  if (blocks <= 0) {
    check(static_cast<int>(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, Threads, 0)),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    blocks = std::max(blocks, 1);
    std::lock_guard<std::mutex> lock(mu);
    per_sm[key] = blocks;
  }
  return static_cast<int64_t>(multiprocessor_count()) * blocks;
}

// Blocks for `work` thread-items of a Threads-wide grid-stride kernel: at most one full wave.
template <int Threads, class Kernel>
unsigned grid_for(Kernel kernel, int64_t work) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(ceil_div(work, Threads), full_wave<Threads>(kernel))));
}

}  // namespace launch
}  // namespace cuda
}  // namespace fastnn
