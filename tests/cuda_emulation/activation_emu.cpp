// csrc/cuda/activation_kernels.cuh compiled for the host under tests/cuda_emulation/emu.h, with the
// head / packets / tail split of csrc/cuda/activation.cu (vec = 0 forces the per-element path) and
// the PReLU rows layout (one block per (row, segment), 1-D blocks). Loaded with ctypes by
// tests/test_activation_cuda_emulated.py.
#include "cuda_emulation/emu.h"

#include <cstdint>
#include <vector>

#include "cuda/activation_kernels.cuh"

using namespace fastnn;
using namespace fastnn::cuda::activation_detail;

namespace {

struct SplitE {
  int64_t head, nvec;
};

template <class T>
SplitE split(int64_t n, const void* a, const void* b, const void* c, int vec) {
  constexpr int64_t W = 16 / sizeof(T);
  const uintptr_t mis = reinterpret_cast<uintptr_t>(a) % 16;
  if (!vec || reinterpret_cast<uintptr_t>(b) % 16 != mis || (c && reinterpret_cast<uintptr_t>(c) % 16 != mis) ||
      mis % sizeof(T) != 0)
    return {0, 0};
  const int64_t head = std::min<int64_t>(n, static_cast<int64_t>((16 - mis) % 16 / sizeof(T)));
  return {head, (n - head) / W};
}

template <class T, class F>
void with_op(int op, double slope, double alpha, double scale, F&& f) {
  const Coef<T> k{static_cast<T>(slope), static_cast<T>(scale), static_cast<T>(scale * alpha)};
  switch (op) {
    case kActIdentity: f(IdentityOp<T>{}); break;
    case kActSigmoid: f(SigmoidOp<T>{}); break;
    case kActTanh: f(TanhOp<T>{}); break;
    case kActRelu: f(ReluOp<T>{}); break;
    case kActLeakyRelu: f(LeakyReluOp<T>{k.slope}); break;
    case kActElu: f(EluOp<T>{k.pos, k.neg}); break;
  }
}

template <class T>
void fwd(int op, const T* x, T* y, int64_t n, double slope, double alpha, double scale, int grid, int vec) {
  if (n <= 0) return;
  const SplitE s = split<T>(n, x, y, nullptr, vec);
  with_op<T>(op, slope, alpha, scale, [&](auto o) {
    emu_launch(grid, 1, kThreads, [&] { act_forward_kernel<T, decltype(o)>(x, y, n, s.head, s.nvec, o); });
  });
}

template <class T>
void bwd(int op, const T* g, const T* x, T* gx, int64_t n, double slope, double alpha, double scale, int grid,
         int vec) {
  if (n <= 0) return;
  const SplitE s = split<T>(n, g, x, gx, vec);
  with_op<T>(op, slope, alpha, scale, [&](auto o) {
    emu_launch(grid, 1, kThreads, [&] { act_backward_kernel<T, decltype(o)>(g, x, gx, n, s.head, s.nvec, o); });
  });
}

// PReLU rows layout over (outer, C, inner) with S segments per row; backward also reduces gw.
template <class T>
void prelu_rows(const T* g, const T* x, const T* w, int64_t w_size, T* out, T* gw, int64_t outer, int64_t C,
                int64_t inner, int64_t S, int grid) {
  const int64_t seg = (inner + S - 1) / S;
  S = (inner + seg - 1) / seg;
  const int64_t wstride = w_size == 1 ? 0 : 1;
  if (g == nullptr) {
    emu_launch(grid, 1, kThreads, [&] {
      prelu_rows_kernel<T, false>(nullptr, x, w, wstride, out, nullptr, outer * C, C, inner, S, seg);
    });
    return;
  }
  std::vector<double> partial(static_cast<size_t>(outer * C * S));
  emu_launch(grid, 1, kThreads, [&] {
    prelu_rows_kernel<T, true>(g, x, w, wstride, out, partial.data(), outer * C, C, inner, S, seg);
  });
  // partial is (A = outer, C, K = S); one shared weight: Cq = 1 over (A, C*K)
  const int64_t Cq = w_size == 1 ? 1 : C, K = w_size == 1 ? C * S : S;
  emu_launch(static_cast<unsigned>(Cq), 1, kThreads,
             [&] { prelu_wgrad_reduce_kernel<T>(partial.data(), gw, outer, Cq, K); });
}

}  // namespace

extern "C" {
void emu_act_fwd32(int op, const float* x, float* y, int64_t n, double sl, double al, double sc, int grid, int vec) {
  fwd<float>(op, x, y, n, sl, al, sc, grid, vec);
}
void emu_act_fwd64(int op, const double* x, double* y, int64_t n, double sl, double al, double sc, int grid, int vec) {
  fwd<double>(op, x, y, n, sl, al, sc, grid, vec);
}
void emu_act_bwd32(int op, const float* g, const float* x, float* gx, int64_t n, double sl, double al, double sc,
                   int grid, int vec) {
  bwd<float>(op, g, x, gx, n, sl, al, sc, grid, vec);
}
void emu_act_bwd64(int op, const double* g, const double* x, double* gx, int64_t n, double sl, double al, double sc,
                   int grid, int vec) {
  bwd<double>(op, g, x, gx, n, sl, al, sc, grid, vec);
}
void emu_prelu_rows32(const float* g, const float* x, const float* w, int64_t w_size, float* out, float* gw,
                      int64_t outer, int64_t C, int64_t inner, int64_t S, int grid) {
  prelu_rows<float>(g, x, w, w_size, out, gw, outer, C, inner, S, grid);
}
void emu_prelu_rows64(const double* g, const double* x, const double* w, int64_t w_size, double* out, double* gw,
                      int64_t outer, int64_t C, int64_t inner, int64_t S, int grid) {
  prelu_rows<double>(g, x, w, w_size, out, gw, outer, C, inner, S, grid);
}
}
