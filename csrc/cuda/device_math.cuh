// Device math shared by the elementwise and reduction kernels (activation.cu, linear.cu, loss.cu):
// exp/expm1/tanh/abs overloaded for float and double (CUDA's accurate versions: the kernels promise
// the CPU kernels' tolerances), deterministic block reductions, and the 16-byte packets of
// packed128.cuh. Also compiles for the host under tests/cuda_emulation/emu.h.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/packed128.cuh"

namespace fastnn {
namespace cuda {
namespace dmath {

#ifdef __CUDACC__
__device__ __forceinline__ float dabs(float x) { return fabsf(x); }
__device__ __forceinline__ double dabs(double x) { return fabs(x); }
__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dexpm1(float x) { return expm1f(x); }
__device__ __forceinline__ double dexpm1(double x) { return expm1(x); }
__device__ __forceinline__ float dtanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dtanh(double x) { return tanh(x); }
#else  // host emulation: the host's libm stands in for CUDA's
inline float dabs(float x) { return std::fabs(x); }
inline double dabs(double x) { return std::fabs(x); }
inline float dexp(float x) { return std::exp(x); }
inline double dexp(double x) { return std::exp(x); }
inline float dexpm1(float x) { return std::expm1(x); }
inline double dexpm1(double x) { return std::expm1(x); }
inline float dtanh(float x) { return std::tanh(x); }
inline double dtanh(double x) { return std::tanh(x); }
#endif

constexpr unsigned kFullMask = 0xffffffffu;

#ifdef __CUDACC__
// Sum over the 32 lanes of a warp (butterfly: every lane gets the same sum, in a fixed order).
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}
#endif

// Sum of v over a Threads-wide block in a fixed tree order (deterministic: the same bits every run);
// every thread gets the sum. Must be reached by all threads of the block.
template <int Threads>
__device__ double block_sum(double v) {
  __shared__ double sh[Threads];
  sh[threadIdx.x] = v;
  __syncthreads();
#pragma unroll
  for (int s = Threads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();  // sh may be reused by the next call
  return r;
}

// Minimum of v over a Threads-wide block; every thread gets it.
template <int Threads>
__device__ int64_t block_min(int64_t v) {
  __shared__ int64_t sh[Threads];
  sh[threadIdx.x] = v;
  __syncthreads();
#pragma unroll
  for (int s = Threads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] = sh[threadIdx.x + s] < sh[threadIdx.x] ? sh[threadIdx.x + s] : sh[threadIdx.x];
    __syncthreads();
  }
  const int64_t r = sh[0];
  __syncthreads();
  return r;
}

}  // namespace dmath
}  // namespace cuda
}  // namespace fastnn
