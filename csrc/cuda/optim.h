// Optimizer updates on the GPU: launchers callable from plain C++ (csrc/bindings/cuda_optim.cpp).
// The same formulas, in the same operation order, as csrc/cpu/optim.cpp (see csrc/cpu/optim.h
// for SgdArgs / AdamArgs): every scalar is formed in double on the host and rounded once to T,
// and every multiply-add the CPU does with an FMA instruction is one __fma_rn here, every other
// operation one explicitly rounded IEEE operation (no contraction by nvcc). Hence float32 and
// float64 results are bit-identical to the CPU's AVX2 / AVX-512 paths (which use FMA) and within
// one rounding per FMA of its baseline path (which multiplies and adds separately).
// Every pointer is device memory with n elements aligned to T; every launch is asynchronous on
// the legacy default stream (stream 0) and throws std::runtime_error if it fails; n == 0 launches
// nothing. w may alias nothing else; each element is read before it is written by one thread.
#pragma once

#include <cstdint>

#include "cpu/optim.h"

namespace fastnn {
namespace cuda {

// Table mode (SPEC12): rows != nullptr makes the kernel read its step's coefficients from row
// *counter of this device float64 table when it runs (SGD rows: lr, first; Adam rows: lr,
// step_size, bc2_sqrt; see optim_ops.cuh), ignoring a.lr / a.first / a.step_size / a.bc2_sqrt.
// counter: a device uint64, not advanced here. Default: the scalars of `a` (no table).
struct StepTable {
  const double* rows = nullptr;
  const uint64_t* counter = nullptr;
};

// buf: the momentum buffer (unused, may be null, when a.momentum == 0).
void sgd_step(float* w, const float* g, float* buf, int64_t n, const SgdArgs& a, const StepTable& t = {});
void sgd_step(double* w, const double* g, double* buf, int64_t n, const SgdArgs& a, const StepTable& t = {});

// m, v: exp_avg and exp_avg_sq. a.step_size and a.bc2_sqrt are formed by the caller (host double).
void adam_step(float* w, const float* g, float* m, float* v, int64_t n, const AdamArgs& a,
               const StepTable& t = {});
void adam_step(double* w, const double* g, double* m, double* v, int64_t n, const AdamArgs& a,
               const StepTable& t = {});

}  // namespace cuda
}  // namespace fastnn
