// Activation kernels on the GPU, forward and backward, float32 and float64: the same semantics
// as csrc/cpu/activation.cpp (which is the reference; tests/test_cuda.py checks both against a
// NumPy float64 reference). Derivatives at 0 follow PyTorch (relu 0, leaky_relu/prelu the slope,
// elu/selu scale*alpha); NaN in x gives NaN out in every forward and backward; a backward is
// grad_output * f'(x) as one IEEE product. Math uses CUDA's accurate expf/expm1f/tanhf (and
// the double versions): this file must not be built with --use_fast_math.
//
// Every elementwise op is one memory-bound pass: 16-byte vector loads and stores (float4 /
// double2) in a grid-stride loop, with the unaligned head and the tail done per element. The
// ceiling is device-to-device copy bandwidth (bench/activations_cuda.py measures both).
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
#include "cuda/activation_kernels.cuh"
#include "cuda/launch.cuh"

namespace fastnn {
namespace cuda {
namespace {

using namespace activation_detail;

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
  if (op < 0 || op >= kActCount || op == kActPrelu) throw std::invalid_argument("op: unknown activation id " + std::to_string(op) + " (PReLU goes through the prelu ops)");
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
    case kActIdentity: launch_forward(x, y, n, IdentityOp<T>{}); break;
    case kActSigmoid: launch_forward(x, y, n, SigmoidOp<T>{}); break;
    case kActTanh: launch_forward(x, y, n, TanhOp<T>{}); break;
    case kActRelu: launch_forward(x, y, n, ReluOp<T>{}); break;
    case kActLeakyRelu: launch_forward(x, y, n, LeakyReluOp<T>{k.slope}); break;
    case kActElu: launch_forward(x, y, n, EluOp<T>{k.pos, k.neg}); break;
  }
}

template <class T>
void act_backward_impl(int op, const T* g, const T* x, T* gx, int64_t n, const ActParams& p) {
  check_op(op);
  if (n <= 0) return;
  const Coef<T> k = coef<T>(p);
  switch (op) {
    case kActIdentity: launch_backward(g, x, gx, n, IdentityOp<T>{}); break;
    case kActSigmoid: launch_backward(g, x, gx, n, SigmoidOp<T>{}); break;
    case kActTanh: launch_backward(g, x, gx, n, TanhOp<T>{}); break;
    case kActRelu: launch_backward(g, x, gx, n, ReluOp<T>{}); break;
    case kActLeakyRelu: launch_backward(g, x, gx, n, LeakyReluOp<T>{k.slope}); break;
    case kActElu: launch_backward(g, x, gx, n, EluOp<T>{k.pos, k.neg}); break;
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
