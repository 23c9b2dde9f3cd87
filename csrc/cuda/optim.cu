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
//
// The kernel is csrc/cuda/optim_kernels.cuh (also run by the host emulation); this file only
// launches it. Table mode (SPEC12, for a replayed CUDA graph): each thread first builds its
// functor from row *counter of a device float64 table (optim_ops.cuh's SgdTable / AdamTable),
// with the same double-to-T conversions as make_sgd / make_adam on the host, so a table row gives
// the bits the scalar call would (tests/test_train_cuda_emulated.py).
#include "cuda/optim.h"

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/device.h"
#include "cuda/launch.cuh"
#include "cuda/optim_kernels.cuh"
#include "cuda/optim_ops.cuh"
#include "cuda/packed128.cuh"

namespace fastnn {
namespace cuda {
namespace {

using namespace optim_kernels;
using namespace optim_ops;

// ------------------------------------------------------------------------------------------------
// kernel launchers

template <int NS, class T, class Op, class Rows>
void launch_update(T* w, const T* g, T* s1, T* s2, int64_t n, Op op, Rows rows, const char* what) {
  if (n <= 0) return;
  const packed::Split s = packed::split_for<T>(n, {w, g, NS >= 1 ? s1 : nullptr, NS >= 2 ? s2 : nullptr});
  auto kernel = update_kernel<T, NS, Op, Rows>;
  const int64_t work = s.nvec > 0 ? s.nvec : n;
  kernel<<<launch::grid_for<kThreads>(kernel, work), kThreads, 0, launch::stream()>>>(w, g, s1, s2, n, s.head, s.nvec,
                                                                                       op, rows);
  launch::check_launch(what);
}

template <class T, class Rows>
void sgd_with(T* w, const T* g, T* buf, int64_t n, const SgdOp<T>& op, Rows rows) {
  if (op.mode == 0) launch_update<0>(w, g, static_cast<T*>(nullptr), static_cast<T*>(nullptr), n, op, rows, "sgd kernel launch");
  else launch_update<1>(w, g, buf, static_cast<T*>(nullptr), n, op, rows, "sgd kernel launch");
}

template <class T>
void sgd_impl(T* w, const T* g, T* buf, int64_t n, const SgdArgs& a, const StepTable& t) {
  const SgdOp<T> op = make_sgd<T>(a);
  if (t.rows) sgd_with(w, g, buf, n, op, SgdTable{t.rows, t.counter});
  else sgd_with(w, g, buf, n, op, NoTable{});
}

template <class T>
void adam_impl(T* w, const T* g, T* m, T* v, int64_t n, const AdamArgs& a, const StepTable& t) {
  if (t.rows) launch_update<2>(w, g, m, v, n, make_adam<T>(a), AdamTable{t.rows, t.counter, a.decoupled}, "adam kernel launch");
  else launch_update<2>(w, g, m, v, n, make_adam<T>(a), NoTable{}, "adam kernel launch");
}

}  // namespace

void sgd_step(float* w, const float* g, float* buf, int64_t n, const SgdArgs& a, const StepTable& t) {
  sgd_impl(w, g, buf, n, a, t);
}
void sgd_step(double* w, const double* g, double* buf, int64_t n, const SgdArgs& a, const StepTable& t) {
  sgd_impl(w, g, buf, n, a, t);
}
void adam_step(float* w, const float* g, float* m, float* v, int64_t n, const AdamArgs& a, const StepTable& t) {
  adam_impl(w, g, m, v, n, a, t);
}
void adam_step(double* w, const double* g, double* m, double* v, int64_t n, const AdamArgs& a, const StepTable& t) {
  adam_impl(w, g, m, v, n, a, t);
}

}  // namespace cuda
}  // namespace fastnn
