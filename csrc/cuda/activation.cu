// Activation kernels on the GPU, forward and backward, float32 and float64: the same semantics
// as csrc/cpu/activation.cpp (which is the reference; tests/test_cuda.py checks both against a
// NumPy float64 reference). Derivatives at 0 follow PyTorch (relu 0, leaky_relu/prelu the slope,
// elu/selu scale*alpha); NaN in x gives NaN out in every forward and backward; a backward is
// grad_output * f'(x) as one IEEE product. Math uses CUDA's accurate expf/expm1f/tanhf (and
// the double versions): this file must not be built with --use_fast_math.
//
// Every elementwise op is one memory-bound pass: 16-byte vector loads and stores (float4 /
// double2) in a grid-stride loop, with the unaligned head and the tail done per element. The
// ceiling is device-to-device copy bandwidth (bench/gpu_activations.py measures both).
#include "cuda/activation.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "cuda/device.h"
#include "cuda/device_math.cuh"
#include "cuda/launch.cuh"
#include "cuda/packed128.cuh"

namespace fastnn {
namespace cuda {
namespace {

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
__global__ void __launch_bounds__(kThreads) prelu_rows_kernel(const T* g, const T* x, const T* w, int64_t wstride,
                                                              T* out, double* partial, int64_t rows, int64_t C,
                                                              int64_t inner, int64_t S, int64_t seg) {
  for (int64_t it = blockIdx.x; it < rows * S; it += gridDim.x) {
    const int64_t r = it / S, s = it % S;
    const T wc = w[(r % C) * wstride];
    const int64_t base = r * inner;
    const int64_t b = s * seg, e = min(inner, b + seg);
    double acc = 0.0;
    for (int64_t i = base + b + threadIdx.x; i < base + e; i += kThreads) {
      const T xv = x[i];
      if (kBackward) {
        const T gv = g[i];
        out[i] = gv * nan_where_x_nan(xv > T(0) ? T(1) : wc, xv);
        if (!(xv > T(0))) acc += static_cast<double>(xv) * static_cast<double>(gv);
      } else {
        out[i] = xv > T(0) ? xv : xv * wc;
      }
    }
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

// ------------------------------------------------------------------------------------------------
// kernel launchers

using launch::ceil_div;
using launch::check_launch;

template <class Kernel>
unsigned grid_for(Kernel kernel, int64_t work) { return launch::grid_for<kThreads>(kernel, work); }

// The head / packets / tail split for pointers that must be aligned alike.
struct Split {
  int64_t head, nvec;
};

template <class T>
Split split_for(int64_t n, const void* a, const void* b, const void* c = nullptr) {
  constexpr int64_t W = 16 / sizeof(T);
  const uintptr_t mis = reinterpret_cast<uintptr_t>(a) % 16;
  if (reinterpret_cast<uintptr_t>(b) % 16 != mis || (c && reinterpret_cast<uintptr_t>(c) % 16 != mis) ||
      mis % sizeof(T) != 0)
    return {0, 0};
  const int64_t head = std::min<int64_t>(n, static_cast<int64_t>((16 - mis) % 16 / sizeof(T)));
  return {head, (n - head) / W};
}

template <class T>
Coef<T> coef(const ActParams& p) {
  return Coef<T>{static_cast<T>(p.slope), static_cast<T>(p.scale), static_cast<T>(p.scale * p.alpha)};
}

void check_op(int op) {
  if (op < 0 || op >= kNumActs) throw std::invalid_argument("op: unknown activation id " + std::to_string(op));
}

template <class T, class Op>
void launch_forward(const T* x, T* y, int64_t n, Op op) {
  const Split s = split_for<T>(n, x, y);
  auto kernel = act_forward_kernel<T, Op>;
  const int64_t work = s.nvec > 0 ? ceil_div(s.nvec, kUnroll) : ceil_div(n, kScalarUnroll);
  kernel<<<grid_for(kernel, work), kThreads, 0, launch::stream()>>>(x, y, n, s.head, s.nvec, op);
  check_launch("act_forward kernel launch");
}

template <class T, class Op>
void launch_backward(const T* g, const T* x, T* gx, int64_t n, Op op) {
  const Split s = split_for<T>(n, g, x, gx);
  auto kernel = act_backward_kernel<T, Op>;
  const int64_t work = s.nvec > 0 ? ceil_div(s.nvec, kUnroll) : ceil_div(n, kScalarUnroll);
  kernel<<<grid_for(kernel, work), kThreads, 0, launch::stream()>>>(g, x, gx, n, s.head, s.nvec, op);
  check_launch("act_backward kernel launch");
}

template <class T>
void act_forward_impl(int op, const T* x, T* y, int64_t n, const ActParams& p) {
  check_op(op);
  if (n <= 0) return;
  const Coef<T> k = coef<T>(p);
  switch (op) {
    case kSigmoid: launch_forward(x, y, n, SigmoidOp<T>{}); break;
    case kTanh: launch_forward(x, y, n, TanhOp<T>{}); break;
    case kRelu: launch_forward(x, y, n, ReluOp<T>{}); break;
    case kLeakyRelu: launch_forward(x, y, n, LeakyReluOp<T>{k.slope}); break;
    case kElu: launch_forward(x, y, n, EluOp<T>{k.pos, k.neg}); break;
  }
}

template <class T>
void act_backward_impl(int op, const T* g, const T* x, T* gx, int64_t n, const ActParams& p) {
  check_op(op);
  if (n <= 0) return;
  const Coef<T> k = coef<T>(p);
  switch (op) {
    case kSigmoid: launch_backward(g, x, gx, n, SigmoidOp<T>{}); break;
    case kTanh: launch_backward(g, x, gx, n, TanhOp<T>{}); break;
    case kRelu: launch_backward(g, x, gx, n, ReluOp<T>{}); break;
    case kLeakyRelu: launch_backward(g, x, gx, n, LeakyReluOp<T>{k.slope}); break;
    case kElu: launch_backward(g, x, gx, n, EluOp<T>{k.pos, k.neg}); break;
  }
}

// ---- PReLU: which layout, and how the work is cut. Every number here depends only on the shape
// (never on the GPU), so the weight gradient's summation order is the same on every device.

constexpr int64_t kRowsMinInner = 256;  // a row fills a block: one block per (row, segment)
constexpr int64_t kTargetItems = 4096;  // work items (blocks) to aim for
constexpr int64_t kMinSegment = 2048;   // elements per row segment, at least (unless the row is shorter)
constexpr int64_t kMinChunkRows = 64;   // rows per column chunk, at least
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = 1 << 20;  // grid-stride beyond this

struct PreluPlan {
  bool rows;       // rows layout (else columns)
  int64_t S, seg;  // rows: segments per row and their length
  int64_t R, nchunks;  // columns: rows per chunk and chunks
  int64_t A, K;    // the partial buffer is (A, C, K)
};

PreluPlan plan_prelu(int64_t outer, int64_t C, int64_t inner) {
  PreluPlan p{};
  p.rows = inner >= kRowsMinInner;
  if (p.rows) {
    const int64_t rows = outer * C;
    const int64_t max_s = std::max<int64_t>(1, inner / kMinSegment);
    p.S = std::max<int64_t>(1, std::min(max_s, ceil_div(kTargetItems, std::max<int64_t>(rows, 1))));
    p.seg = ceil_div(inner, p.S);
    p.S = ceil_div(inner, p.seg);
    p.A = outer;
    p.K = p.S;
  } else {
    const int64_t L = C * inner;
    const int64_t gx = std::max<int64_t>(1, ceil_div(L, 32));
    const int64_t want = std::max<int64_t>(1, kTargetItems / gx);
    p.R = std::max({kMinChunkRows, ceil_div(outer, want), ceil_div(outer, kMaxGridY)});
    p.nchunks = ceil_div(outer, p.R);
    p.A = p.nchunks;
    p.K = inner;
  }
  return p;
}


template <class T, bool kBackward>
void launch_prelu_pass(const PreluPlan& p, const T* g, const T* x, const T* w, int64_t wstride, T* out,
                       double* partial, int64_t outer, int64_t C, int64_t inner) {
  if (outer == 0 || inner == 0) return;
  if (p.rows) {
    const int64_t items = outer * C * p.S;
    const unsigned grid = static_cast<unsigned>(std::min(items, kMaxGridX));
    prelu_rows_kernel<T, kBackward><<<grid, kThreads, 0, launch::stream()>>>(g, x, w, wstride, out, partial, outer * C, C, inner, p.S, p.seg);
  } else {
    const int64_t L = C * inner;
    if (ceil_div(L, 32) > INT32_MAX) throw std::invalid_argument("prelu: C * inner is too large for one launch");
    const dim3 grid(static_cast<unsigned>(ceil_div(L, 32)), static_cast<unsigned>(p.nchunks));
    prelu_cols_kernel<T, kBackward><<<grid, dim3(32, 8), 0, launch::stream()>>>(g, x, w, wstride, out, partial, outer, L, inner, p.R);
  }
  check_launch(kBackward ? "prelu_backward kernel launch" : "prelu_forward kernel launch");
}

template <class T>
void prelu_forward_impl(const T* x, const T* w, int64_t w_size, T* y, int64_t outer, int64_t C, int64_t inner) {
  const PreluPlan p = plan_prelu(outer, C, inner);
  launch_prelu_pass<T, false>(p, nullptr, x, w, w_size == 1 ? 0 : 1, y, nullptr, outer, C, inner);
}

// Frees a device block at scope exit (after the launches that use it are queued: stream order
// makes the reuse safe).
struct ScratchGuard {
  void* p;
  ~ScratchGuard() {
    try {
      device_free(p);
    } catch (...) {
    }
  }
};

template <class T>
void prelu_backward_impl(const T* g, const T* x, const T* w, int64_t w_size, T* gx, T* gw, int64_t outer, int64_t C,
                         int64_t inner) {
  const PreluPlan p = plan_prelu(outer, C, inner);
  const int64_t terms = p.A * C * p.K;
  double* partial = static_cast<double*>(device_malloc(static_cast<size_t>(terms) * sizeof(double)));
  ScratchGuard guard{partial};
  launch_prelu_pass<T, true>(p, g, x, w, w_size == 1 ? 0 : 1, gx, partial, outer, C, inner);
  // A shared weight sums the (A, C, K) buffer as (A, 1, C*K).
  const int64_t Cq = w_size == 1 ? 1 : C;
  const int64_t K = w_size == 1 ? C * p.K : p.K;
  const unsigned grid = static_cast<unsigned>(std::min(Cq, kMaxGridX));
  prelu_wgrad_reduce_kernel<T><<<grid, kThreads, 0, launch::stream()>>>(partial, gw, p.A, Cq, K);
  check_launch("prelu weight-gradient kernel launch");
}

}  // namespace

void act_forward(int op, const float* x, float* y, int64_t n, const ActParams& p) { act_forward_impl(op, x, y, n, p); }
void act_forward(int op, const double* x, double* y, int64_t n, const ActParams& p) { act_forward_impl(op, x, y, n, p); }

void act_backward(int op, const float* g, const float* x, float* gx, int64_t n, const ActParams& p) {
  act_backward_impl(op, g, x, gx, n, p);
}
void act_backward(int op, const double* g, const double* x, double* gx, int64_t n, const ActParams& p) {
  act_backward_impl(op, g, x, gx, n, p);
}

void prelu_forward(const float* x, const float* w, int64_t w_size, float* y, int64_t outer, int64_t C, int64_t inner) {
  prelu_forward_impl(x, w, w_size, y, outer, C, inner);
}
void prelu_forward(const double* x, const double* w, int64_t w_size, double* y, int64_t outer, int64_t C,
                   int64_t inner) {
  prelu_forward_impl(x, w, w_size, y, outer, C, inner);
}

void prelu_backward(const float* g, const float* x, const float* w, int64_t w_size, float* gx, float* gw, int64_t outer,
                    int64_t C, int64_t inner) {
  prelu_backward_impl(g, x, w, w_size, gx, gw, outer, C, inner);
}
void prelu_backward(const double* g, const double* x, const double* w, int64_t w_size, double* gx, double* gw,
                    int64_t outer, int64_t C, int64_t inner) {
  prelu_backward_impl(g, x, w, w_size, gx, gw, outer, C, inner);
}

}  // namespace cuda
}  // namespace fastnn
