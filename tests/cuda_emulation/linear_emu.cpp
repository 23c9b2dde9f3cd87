// csrc/cuda/linear_kernels.cuh compiled for the host under tests/cuda_emulation/emu.h, with the
// launch shapes of csrc/cuda/linear.cu (the grid size is an argument, to exercise grid strides and
// the per-thread Philox walk). Loaded with ctypes by tests/test_linear_cuda_emulated.py.
#include "cuda_emulation/emu.h"

#include <cstdint>

#include "cuda/linear_kernels.cuh"

using namespace fastnn;
using namespace fastnn::cuda::linear_detail;

namespace {

// Per-call parameters shared by the entry points (ctypes passes one struct pointer).
struct EmuLinear {
  int64_t M, N;
  int act;
  double slope, pos, neg;  // leaky slope; ELU family: x > 0 ? pos * x : neg * expm1(x)
  const void* prelu_w;
  int64_t prelu_size;
  int drop;                // dropout on the (M, N) output
  uint64_t seed, q0;
  uint32_t thr;
  double scale;
  const uint64_t* rng;     // device seed/offset (the graph-safe variant) or null
  int grid;                // blocks of kThreads
};

template <class C>
ActC<C> act_of(const EmuLinear& e) {
  ActC<C> a;
  a.act = e.act;
  a.slope = static_cast<C>(e.slope);
  a.pos = static_cast<C>(e.pos);
  a.neg = static_cast<C>(e.neg);
  a.prelu_w = e.prelu_w;
  a.prelu_size = e.prelu_size;
  return a;
}

template <class T>
void epilogue(const EmuLinear& e, const T* src, T* y, T* save, int save_pre, uint32_t* mask, int64_t mask_words,
              const T* bias) {
  using C = typename Compute<T>::type;
  EpiArgs<T, C> a{};
  a.src = src;
  a.y = y;
  a.save = save;
  a.save_pre = save_pre != 0;
  a.mask = mask;
  a.mask_words = mask_words;
  a.bias = bias;
  a.M = e.M;
  a.N = e.N;
  a.act = act_of<C>(e);
  a.seed = e.seed;
  a.q0 = e.q0;
  a.rng = e.rng;
  a.thr = e.thr;
  a.scale = static_cast<C>(e.scale);
  if (e.drop)
    emu_launch(e.grid, 1, kThreads, [&] { epilogue_kernel<T, true>(a); });
  else
    emu_launch(e.grid, 1, kThreads, [&] { epilogue_kernel<T, false>(a); });
}

template <class T>
void grad(const EmuLinear& e, const T* g, const T* saved, const uint32_t* mask, int64_t mask_words, T* gz) {
  using C = typename Compute<T>::type;
  GradArgs<T, C> a{};
  a.g = g;
  a.saved = saved;
  a.mask = mask;
  a.mask_words = mask_words;
  a.gz = gz;
  a.M = e.M;
  a.N = e.N;
  a.act = act_of<C>(e);
  a.seed = e.seed;
  a.q0 = e.q0;
  a.rng = e.rng;
  a.thr = e.thr;
  a.scale = static_cast<C>(e.scale);
  if (e.drop)
    emu_launch(e.grid, 1, kThreads, [&] { grad_kernel<T, true>(a); });
  else
    emu_launch(e.grid, 1, kThreads, [&] { grad_kernel<T, false>(a); });
}

// out = column sums (Mode kSumPlain of a; kSumPrelu of the PReLU weight gradient), `all`: one total.
template <class T>
void colsum(const EmuLinear& e, int mode, const T* a, const T* g, int all, double* partial, T* out) {
  const int64_t chunks = (e.M + kRowsPerChunk - 1) / kRowsPerChunk > 0 ? (e.M + kRowsPerChunk - 1) / kRowsPerChunk : 1;
  const unsigned gx = static_cast<unsigned>((e.N + kThreads - 1) / kThreads);
  if (mode == kSumPlain)
    emu_launch(gx, static_cast<unsigned>(chunks), kThreads, [&] {
      colsum_partial_kernel<T, kSumPlain>(a, g, e.M, e.N, e.drop != 0, e.seed, e.q0, e.rng, e.thr, e.scale, partial);
    });
  else
    emu_launch(gx, static_cast<unsigned>(chunks), kThreads, [&] {
      colsum_partial_kernel<T, kSumPrelu>(a, g, e.M, e.N, e.drop != 0, e.seed, e.q0, e.rng, e.thr, e.scale, partial);
    });
  emu_launch(all ? 1u : gx, 1, kThreads, [&] { colsum_finish_kernel<T>(partial, chunks, e.N, all != 0, out); });
}

template <class T>
void drop_scale(const EmuLinear& e, const T* w, T* out, int64_t n) {
  using C = typename Compute<T>::type;
  emu_launch(e.grid, 1, kThreads,
             [&] { drop_scale_kernel<T>(w, out, n, e.seed, e.q0, e.rng, e.thr, static_cast<C>(e.scale)); });
}

}  // namespace

extern "C" {

void emu_linear_epilogue32(const EmuLinear* e, const float* src, float* y, float* save, int save_pre, uint32_t* mask,
                           int64_t mask_words, const float* bias) {
  epilogue<float>(*e, src, y, save, save_pre, mask, mask_words, bias);
}
void emu_linear_epilogue64(const EmuLinear* e, const double* src, double* y, double* save, int save_pre,
                           uint32_t* mask, int64_t mask_words, const double* bias) {
  epilogue<double>(*e, src, y, save, save_pre, mask, mask_words, bias);
}
void emu_linear_grad32(const EmuLinear* e, const float* g, const float* saved, const uint32_t* mask,
                       int64_t mask_words, float* gz) {
  grad<float>(*e, g, saved, mask, mask_words, gz);
}
void emu_linear_grad64(const EmuLinear* e, const double* g, const double* saved, const uint32_t* mask,
                       int64_t mask_words, double* gz) {
  grad<double>(*e, g, saved, mask, mask_words, gz);
}
void emu_linear_colsum32(const EmuLinear* e, int mode, const float* a, const float* g, int all, double* partial,
                         float* out) {
  colsum<float>(*e, mode, a, g, all, partial, out);
}
void emu_linear_colsum64(const EmuLinear* e, int mode, const double* a, const double* g, int all, double* partial,
                         double* out) {
  colsum<double>(*e, mode, a, g, all, partial, out);
}
void emu_linear_drop_scale32(const EmuLinear* e, const float* w, float* out, int64_t n) { drop_scale<float>(*e, w, out, n); }
void emu_linear_drop_scale64(const EmuLinear* e, const double* w, double* out, int64_t n) {
  drop_scale<double>(*e, w, out, n);
}
}
