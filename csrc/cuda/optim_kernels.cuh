// The kernel of csrc/cuda/optim.cu (the per-element math is csrc/cuda/optim_ops.cuh). Plain C++
// so that tests/cuda_emulation compiles it for the host and runs it, table mode included
// (tests/test_train_cuda_emulated.py). Needs nvcc or tests/cuda_emulation/emu.h (not the host
// compiler alone: csrc/bindings includes optim_ops.cuh only).
#pragma once

#include <cstdint>

#include "cuda/optim_ops.cuh"
#include "cuda/packed128.cuh"

namespace fastnn {
namespace cuda {
namespace optim_kernels {

constexpr int kThreads = 256;

// One update per element: w, g, s1, s2 are (n,); NS of the state arrays s1, s2 are read and
// written (the others may be null). Elements [head, head + nvec*W) in 16-byte packets (all the
// used pointers + head are 16-byte aligned), [0, head) and the tail per element; each element is
// read and written by one thread, so the result does not depend on the split or the grid.
// rows(op): the functor for this launch (optim_ops::NoTable: op as given; SgdTable / AdamTable:
// op with this step's coefficients, read from device memory when the kernel runs).
template <class T, int NS, class Op, class Rows>
__global__ void __launch_bounds__(kThreads) update_kernel(T* w, const T* g, T* s1, T* s2, int64_t n, int64_t head,
                                                          int64_t nvec, Op op0, Rows rows) {
  using packed::Packed128;
  constexpr int W = Packed128<T>::W;
  const Op op = rows(op0);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
#pragma unroll 1
  for (int64_t i = tid; i < nvec; i += stride) {
    const int64_t o = head + i * W;
    Packed128<T> wv = Packed128<T>::load(w + o);
    const Packed128<T> gv = Packed128<T>::load(g + o);
    Packed128<T> a{}, b{};
    if (NS >= 1) a = Packed128<T>::load(s1 + o);
    if (NS >= 2) b = Packed128<T>::load(s2 + o);
#pragma unroll
    for (int k = 0; k < W; ++k) op(wv.v[k], gv.v[k], a.v[k], b.v[k]);
    wv.store(w + o);
    if (NS >= 1) a.store(s1 + o);
    if (NS >= 2) b.store(s2 + o);
  }
  auto one = [&](int64_t i) {
    T wi = w[i], a = T(0), b = T(0);
    if (NS >= 1) a = s1[i];
    if (NS >= 2) b = s2[i];
    op(wi, g[i], a, b);
    w[i] = wi;
    if (NS >= 1) s1[i] = a;
    if (NS >= 2) s2[i] = b;
  };
  if (tid < head) one(tid);
#pragma unroll 1
  for (int64_t i = head + nvec * W + tid; i < n; i += stride) one(i);
}

}  // namespace optim_kernels
}  // namespace cuda
}  // namespace fastnn
