// 16-byte packets (llm.c's Packed128) for the elementwise kernels (csrc/cuda/activation.cu,
// optim.cu): loaded and stored through float4 / double2, so every access is one
// ld.global.v4.f32 / st.global.v4.f32 (v2.f64).
// And the head / packets / tail split of a group of pointers that must be aligned alike.
#pragma once

#ifdef __CUDACC__
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cstdint>
#include <initializer_list>

namespace fastnn {
namespace cuda {
namespace packed {

template <class T>
struct Packed128;

template <>
struct Packed128<float> {
  static constexpr int W = 4;
  float v[4];
  static __device__ __forceinline__ Packed128 load(const float* p) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    return Packed128{{t.x, t.y, t.z, t.w}};
  }
  __device__ __forceinline__ void store(float* p) const {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  }
};

template <>
struct Packed128<double> {
  static constexpr int W = 2;
  double v[2];
  static __device__ __forceinline__ Packed128 load(const double* p) {
    const double2 t = *reinterpret_cast<const double2*>(p);
    return Packed128{{t.x, t.y}};
  }
  __device__ __forceinline__ void store(double* p) const {
    *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
  }
};

// Elements [0, head) per element, [head, head + nvec*W) in 16-byte packets, the rest per element.
struct Split {
  int64_t head, nvec;
};

// The split for pointers (nulls ignored) that must all sit at the same offset from a 16-byte
// boundary; {0, 0} (everything per element) when they do not.
template <class T>
Split split_for(int64_t n, std::initializer_list<const void*> ptrs) {
  constexpr int64_t W = 16 / sizeof(T);
  bool first = true;
  uintptr_t mis = 0;
  for (const void* p : ptrs) {
    if (!p) continue;
    const uintptr_t m = reinterpret_cast<uintptr_t>(p) % 16;
    if (first) {
      mis = m;
      first = false;
    } else if (m != mis) {
      return {0, 0};
    }
  }
  if (mis % sizeof(T) != 0) return {0, 0};
  const int64_t head = std::min<int64_t>(n, static_cast<int64_t>((16 - mis) % 16 / sizeof(T)));
  return {head, (n - head) / W};
}

}  // namespace packed
}  // namespace cuda
}  // namespace fastnn
