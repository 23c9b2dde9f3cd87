// Optimizer updates on the GPU, float32 and float64: one fused memory-bound pass per parameter
// (SGD with momentum: reads w, g, buf and writes w, buf; Adam: reads w, g, m, v and writes w, m,
// v), 16-byte vector loads and stores where every array sits at the same offset from a 16-byte
// boundary, the unaligned head and the tail per element. The ceiling is device-to-device copy
// bandwidth for the same bytes (bench/optim_cuda.py measures both).
//
// csrc/cpu/optim.cpp is the reference, operation for operation: where the CPU's AVX2/AVX-512
// code does fmadd(a, b, c) / fnmadd(a, b, c) this does __fma_rn(a, b, c) / __fma_rn(-a, b, c)
// (the same single rounding), and every other product, sum, quotient and square root is an
// explicitly rounded intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn and the double
// versions), which nvcc never contracts into an FMA. Hence bit-identical results to the CPU's
// FMA paths; tests/test_optim_cuda.py checks that, and a tolerance against the baseline path.
#include "cuda/optim.h"

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/device.h"
#include "cuda/launch.cuh"
#include "cuda/optim_ops.cuh"
#include "cuda/packed128.cuh"

namespace fastnn {
namespace cuda {
namespace {

constexpr int kThreads = 256;

using packed::Packed128;
using namespace optim_ops;

// ------------------------------------------------------------------------------------------------
// GPU kernel

// One update per element: w, g, s1, s2 are (n,); NS of the state arrays s1, s2 are read and
// written (the others may be null). Elements [head, head + nvec*W) in 16-byte packets (all the
// used pointers + head are 16-byte aligned), [0, head) and the tail per element; each element is
// read and written by one thread, so the result does not depend on the split or the grid.
template <class T, int NS, class Op>
__global__ void __launch_bounds__(kThreads) update_kernel(T* w, const T* g, T* s1, T* s2, int64_t n, int64_t head,
                                                          int64_t nvec, Op op) {
  constexpr int W = Packed128<T>::W;
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

// ------------------------------------------------------------------------------------------------
// kernel launchers

template <int NS, class T, class Op>
void launch_update(T* w, const T* g, T* s1, T* s2, int64_t n, Op op, const char* what) {
  if (n <= 0) return;
  const packed::Split s = packed::split_for<T>(n, {w, g, NS >= 1 ? s1 : nullptr, NS >= 2 ? s2 : nullptr});
  auto kernel = update_kernel<T, NS, Op>;
  const int64_t work = s.nvec > 0 ? s.nvec : n;
  kernel<<<launch::grid_for<kThreads>(kernel, work), kThreads, 0, launch::stream()>>>(w, g, s1, s2, n, s.head, s.nvec, op);
  launch::check_launch(what);
}

template <class T>
void sgd_impl(T* w, const T* g, T* buf, int64_t n, const SgdArgs& a) {
  const SgdOp<T> op = make_sgd<T>(a);
  if (op.mode == 0) launch_update<0>(w, g, static_cast<T*>(nullptr), static_cast<T*>(nullptr), n, op, "sgd kernel launch");
  else launch_update<1>(w, g, buf, static_cast<T*>(nullptr), n, op, "sgd kernel launch");
}

template <class T>
void adam_impl(T* w, const T* g, T* m, T* v, int64_t n, const AdamArgs& a) {
  launch_update<2>(w, g, m, v, n, make_adam<T>(a), "adam kernel launch");
}

}  // namespace

void sgd_step(float* w, const float* g, float* buf, int64_t n, const SgdArgs& a) { sgd_impl(w, g, buf, n, a); }
void sgd_step(double* w, const double* g, double* buf, int64_t n, const SgdArgs& a) { sgd_impl(w, g, buf, n, a); }
void adam_step(float* w, const float* g, float* m, float* v, int64_t n, const AdamArgs& a) {
  adam_impl(w, g, m, v, n, a);
}
void adam_step(double* w, const double* g, double* m, double* v, int64_t n, const AdamArgs& a) {
  adam_impl(w, g, m, v, n, a);
}

}  // namespace cuda
}  // namespace fastnn
