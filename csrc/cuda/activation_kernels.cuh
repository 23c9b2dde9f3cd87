// Device code of csrc/cuda/activation.cu: the elementwise activation kernels (16-byte packets with
// per-element head and tail) and the PReLU row / column kernels with their weight-gradient
// reduction. Plain C++ apart from CUDA's built-ins, so that tests/cuda_emulation compiles it for
// the host and checks it against the CPU kernels (tests/test_activation_cuda_emulated.py).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/activation_kind.h"  // ActKind
#include "cpu/activation.h"  // ActParams
#include "cuda/device_math.cuh"
#include "cuda/packed128.cuh"

namespace fastnn {
namespace cuda {
namespace activation_detail {

constexpr int kThreads = 256;        // threads per block of every 1-D kernel here
constexpr int kUnroll = 2;           // 16-byte packets per thread per grid-stride iteration
constexpr int kScalarUnroll = 4;     // elements per thread per iteration on the per-element path

// ------------------------------------------------------------------------------------------------
// Scalar math of each op (device). The same formulas as the CPU kernels, lane for lane.

using dmath::dabs;
using dmath::dexp;
using dmath::dexpm1;
using dmath::dtanh;

// Coefficients rounded once from the double parameters: slope (leaky ReLU), pos = scale and
// neg = scale * alpha (ELU family).
template <class T>
struct Coef {
  T slope, pos, neg;
};

// A derivative that is NaN wherever x is.
template <class T>
__device__ __forceinline__ T nan_where_x_nan(T d, T x) {
  return isnan(x) ? x : d;
}

// identity (kActIdentity): y = x, dx = g.
template <class T>
struct IdentityOp {
  __device__ __forceinline__ T fwd(T x) const { return x; }
  __device__ __forceinline__ T bwd(T g, T) const { return g; }
};

// sigmoid(x) = (x < 0 ? e : 1) / (1 + e), e = exp(-|x|): no overflow, accurate in both tails.
// sigmoid'(x) = e / (1 + e)^2.
template <class T>
struct SigmoidOp {
  __device__ __forceinline__ T fwd(T x) const {
    const T e = dexp(T(0) - dabs(x));
    return (x < T(0) ? e : T(1)) / (T(1) + e);
  }
  __device__ __forceinline__ T bwd(T g, T x) const {
    const T e = dexp(T(0) - dabs(x));
    const T d = T(1) + e;
    return g * (e / (d * d));
  }
};

// tanh from CUDA's tanhf/tanh (2 ULP / 1 ULP); tanh'(x) = 4e / (1 + e)^2, e = exp(-2|x|).
template <class T>
struct TanhOp {
  __device__ __forceinline__ T fwd(T x) const { return dtanh(x); }
  __device__ __forceinline__ T bwd(T g, T x) const {
    const T e = dexp(dabs(x) * T(-2));
    const T d = T(1) + e;
    return g * ((T(4) * e) / (d * d));
  }
};

// relu(x) = (x > 0 or NaN) ? x : +0; relu'(0) = 0.
template <class T>
struct ReluOp {
  __device__ __forceinline__ T fwd(T x) const { return !(x <= T(0)) ? x : T(0); }
  __device__ __forceinline__ T bwd(T g, T x) const {
    return g * nan_where_x_nan(x > T(0) ? T(1) : T(0), x);
  }
};

// leaky_relu(x) = x > 0 ? x : slope * x; the derivative at 0 is the slope.
template <class T>
struct LeakyReluOp {
  T slope;
  __device__ __forceinline__ T fwd(T x) const { return x > T(0) ? x : x * slope; }
  __device__ __forceinline__ T bwd(T g, T x) const {
    return g * nan_where_x_nan(x > T(0) ? T(1) : slope, x);
  }
};

// ELU family: y = x > 0 ? scale*x : scale*alpha*expm1(x); f'(x) = x > 0 ? scale :
// scale*alpha*exp(x), scale*alpha at 0.
template <class T>
struct EluOp {
  T pos, neg;
  __device__ __forceinline__ T fwd(T x) const { return x > T(0) ? x * pos : dexpm1(x) * neg; }
  __device__ __forceinline__ T bwd(T g, T x) const { return g * (x > T(0) ? pos : dexp(x) * neg); }
};

// 16-byte packets: csrc/cuda/packed128.cuh.
using packed::Packed128;

// ------------------------------------------------------------------------------------------------
// GPU kernels

// Elementwise forward. x, y are (n,), y may alias x exactly (each element is read and written by
// one thread, read first; hence no __restrict__). Elements [head, head + nvec*W) are done in
// 16-byte packets (x + head and y + head are 16-byte aligned); [0, head) and the tail per element.
// Scalar fallback (misaligned or differently aligned pointers): head = nvec = 0.
template <class T, class Op>
__global__ void __launch_bounds__(kThreads) act_forward_kernel(const T* x, T* y, int64_t n, int64_t head,
                                                               int64_t nvec, Op op) {
  constexpr int W = Packed128<T>::W;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const T* xv = x + head;
  T* yv = y + head;
  // kUnroll packets per thread and iteration, all loaded before any is stored: 32 (backward 64)
  // bytes in flight per thread keep HBM busy even below full occupancy. (Left to NVVM, unrolling
  // cannot hoist a load above the previous store, which may alias it.)
#pragma unroll 1
  for (int64_t i = tid; i < nvec; i += kUnroll * stride) {
    Packed128<T> a[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (i + u * stride < nvec) a[u] = Packed128<T>::load(xv + (i + u * stride) * W);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (i + u * stride < nvec) {
        Packed128<T> r;
#pragma unroll
        for (int k = 0; k < W; ++k) r.v[k] = op.fwd(a[u].v[k]);
        r.store(yv + (i + u * stride) * W);
      }
    }
  }
  if (tid < head) y[tid] = op.fwd(x[tid]);
  // The tail, or everything on the per-element path: kScalarUnroll loads in flight per thread.
#pragma unroll 1
  for (int64_t i = head + nvec * W + tid; i < n; i += kScalarUnroll * stride) {
    T a[kScalarUnroll];
#pragma unroll
    for (int u = 0; u < kScalarUnroll; ++u)
      if (i + u * stride < n) a[u] = x[i + u * stride];
#pragma unroll
    for (int u = 0; u < kScalarUnroll; ++u)
      if (i + u * stride < n) y[i + u * stride] = op.fwd(a[u]);
  }
}

// Elementwise backward: gx = g * f'(x). g, x, gx are (n,); gx may alias g or x exactly. Same
// head / packets / tail split as act_forward_kernel, all three pointers aligned alike.
template <class T, class Op>
__global__ void __launch_bounds__(kThreads) act_backward_kernel(const T* g, const T* x, T* gx, int64_t n,
                                                                int64_t head, int64_t nvec, Op op) {
  constexpr int W = Packed128<T>::W;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const T* gv = g + head;
  const T* xv = x + head;
  T* ov = gx + head;
#pragma unroll 1
  for (int64_t i = tid; i < nvec; i += kUnroll * stride) {
    Packed128<T> a[kUnroll], b[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (i + u * stride < nvec) {
        a[u] = Packed128<T>::load(gv + (i + u * stride) * W);
        b[u] = Packed128<T>::load(xv + (i + u * stride) * W);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (i + u * stride < nvec) {
        Packed128<T> r;
#pragma unroll
        for (int k = 0; k < W; ++k) r.v[k] = op.bwd(a[u].v[k], b[u].v[k]);
        r.store(ov + (i + u * stride) * W);
      }
    }
  }
  if (tid < head) gx[tid] = op.bwd(g[tid], x[tid]);
#pragma unroll 1
  for (int64_t i = head + nvec * W + tid; i < n; i += kScalarUnroll * stride) {
    T a[kScalarUnroll], b[kScalarUnroll];
#pragma unroll
    for (int u = 0; u < kScalarUnroll; ++u) {
      if (i + u * stride < n) {
        a[u] = g[i + u * stride];
        b[u] = x[i + u * stride];
      }
    }
#pragma unroll
    for (int u = 0; u < kScalarUnroll; ++u)
      if (i + u * stride < n) gx[i + u * stride] = op.bwd(a[u], b[u]);
  }
}

__device__ __forceinline__ double block_sum(double v) { return dmath::block_sum<kThreads>(v); }

// PReLU, "rows" layout, for inner >= kRowsMinInner. x, out (and g) are (rows = outer*C, inner);
// row r has channel c = r % C and weight w[c * wstride] (wstride 0: one shared weight). Each
// row is cut into S segments of `seg` elements; one block per (row, segment) work item
// it = r*S + s. Backward also writes partial[it] = sum over the segment of (x > 0 ? 0 : x*g)
// in double, so partial is (outer, C, S).
template <class T, bool kBackward>
__device__ __forceinline__ void prelu_rows_one(const T* g, const T* x, T wc, T* out, int64_t i, double& acc) {
  const T xv = x[i];
  if (kBackward) {
    const T gv = g[i];
    out[i] = gv * nan_where_x_nan(xv > T(0) ? T(1) : wc, xv);
    if (!(xv > T(0))) acc += static_cast<double>(xv) * static_cast<double>(gv);
  } else {
    out[i] = xv > T(0) ? xv : xv * wc;
  }
}

// The segment [lo, hi) of a row goes in 16-byte packets where x, out (and g) sit at the same offset
// from a 16-byte boundary: each packet of x (and g) is loaded before its out packet is stored, so
// out may alias x or g; the unaligned head and the tail go element by element.
template <class T, bool kBackward>
__global__ void __launch_bounds__(kThreads) prelu_rows_kernel(const T* g, const T* x, const T* w, int64_t wstride,
                                                              T* out, double* partial, int64_t rows, int64_t C,
                                                              int64_t inner, int64_t S, int64_t seg) {
  constexpr int W = packed::Packed128<T>::W;
  for (int64_t it = blockIdx.x; it < rows * S; it += gridDim.x) {
    const int64_t r = it / S, s = it % S;
    const T wc = w[(r % C) * wstride];
    const int64_t base = r * inner;
    const int64_t lo = base + s * seg, hi = base + min(inner, s * seg + seg);
    const uintptr_t mis = reinterpret_cast<uintptr_t>(x + lo) % 16;
    const bool vec = mis % sizeof(T) == 0 && reinterpret_cast<uintptr_t>(out + lo) % 16 == mis &&
                     (!kBackward || reinterpret_cast<uintptr_t>(g + lo) % 16 == mis);
    int64_t head = hi - lo, nvec = 0;
    if (vec) {
      head = min(hi - lo, static_cast<int64_t>((16 - mis) % 16 / sizeof(T)));
      nvec = (hi - lo - head) / W;
    }
    double acc = 0.0;
    for (int64_t i = lo + threadIdx.x; i < lo + head; i += kThreads) prelu_rows_one<T, kBackward>(g, x, wc, out, i, acc);
    const int64_t p0 = lo + head;
    for (int64_t q = threadIdx.x; q < nvec; q += kThreads) {
      const int64_t i = p0 + q * W;
      const packed::Packed128<T> xv = packed::Packed128<T>::load(x + i);
      packed::Packed128<T> gv;
      if (kBackward) gv = packed::Packed128<T>::load(g + i);
      packed::Packed128<T> o;
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const T xk = xv.v[k];
        if (kBackward) {
          o.v[k] = gv.v[k] * nan_where_x_nan(xk > T(0) ? T(1) : wc, xk);
          if (!(xk > T(0))) acc += static_cast<double>(xk) * static_cast<double>(gv.v[k]);
        } else {
          o.v[k] = xk > T(0) ? xk : xk * wc;
        }
      }
      o.store(out + i);
    }
    for (int64_t i = p0 + nvec * W + threadIdx.x; i < hi; i += kThreads)
      prelu_rows_one<T, kBackward>(g, x, wc, out, i, acc);
    if (kBackward) {
      acc = block_sum(acc);
      if (threadIdx.x == 0) partial[it] = acc;
    }
  }
}

// PReLU, "columns" layout, for inner < kRowsMinInner: x, out (and g) are (outer, L) with
// L = C*inner, column j in channel j / inner. Block (32, 8) threads: threadIdx.x picks the column
// (a warp reads 32 consecutive elements), blockIdx.y a chunk of R rows that threadIdx.y strides
// by 8. Backward writes partial[chunk][j] = the chunk's column sum of (x > 0 ? 0 : x*g) in
// double (the 8 row-phases added in order), so partial is (nchunks, C, inner).
template <class T, bool kBackward>
__global__ void __launch_bounds__(kThreads) prelu_cols_kernel(const T* g, const T* x, const T* w, int64_t wstride,
                                                              T* out, double* partial, int64_t outer, int64_t L,
                                                              int64_t inner, int64_t R) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * R, r1 = min(outer, r0 + R);
  double acc = 0.0;
  if (j < L) {
    const T wc = w[(j / inner) * wstride];
    for (int64_t o = r0 + threadIdx.y; o < r1; o += 8) {
      const int64_t i = o * L + j;
      const T xv = x[i];
      if (kBackward) {
        const T gv = g[i];
        out[i] = gv * nan_where_x_nan(xv > T(0) ? T(1) : wc, xv);
        if (!(xv > T(0))) acc += static_cast<double>(xv) * static_cast<double>(gv);
      } else {
        out[i] = xv > T(0) ? xv : xv * wc;
      }
    }
  }
  if (kBackward) {
    __shared__ double sh[8][32];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < L) {
      double s = 0.0;
#pragma unroll
      for (int k = 0; k < 8; ++k) s += sh[k][threadIdx.x];
      partial[chunk * L + j] = s;
    }
  }
}

// PReLU weight gradient, second pass: buf is (A, Cq, K) doubles; gw[c] = sum over (a, k) of
// buf[a][c][k] in a fixed order (thread t takes flat terms t, t + kThreads, ..., then
// block_sum), rounded once to T. One block per channel. A*K == 0 gives 0.
template <class T>
__global__ void __launch_bounds__(kThreads) prelu_wgrad_reduce_kernel(const double* buf, T* gw, int64_t A,
                                                                      int64_t Cq, int64_t K) {
  for (int64_t c = blockIdx.x; c < Cq; c += gridDim.x) {
    double acc = 0.0;
    for (int64_t t = threadIdx.x; t < A * K; t += kThreads) {
      const int64_t a = t / K, k = t % K;
      acc += buf[(a * Cq + c) * K + k];
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) gw[c] = static_cast<T>(acc);
  }
}

}  // namespace activation_detail
}  // namespace cuda
}  // namespace fastnn
