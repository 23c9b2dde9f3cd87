// The optimizers' per-step arguments, formed once for the CPU and GPU bindings (and the GPU
// kernels' host reference), so every path sees the same scalars computed the same way in double.
// Binding-side only: no ISA flags here (csrc/cpu/optim.h is included by per-ISA files).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "bindings/common.h"
#include "cpu/optim.h"

namespace fastnn {

inline SgdArgs sgd_args(double lr, double momentum, double dampening, double l2, double l1, bool nesterov,
                        bool first) {
  SgdArgs a;
  a.lr = lr;
  a.momentum = momentum;
  a.dampening = dampening;
  a.l2 = l2;
  a.l1 = l1;
  a.nesterov = nesterov;
  a.first = first;
  return a;
}

// PyTorch's scalars: step_size = lr / (1 - beta1^t), bias_correction2_sqrt = sqrt(1 - beta2^t).
inline AdamArgs adam_args(double lr, double beta1, double beta2, double eps, double l2, double l1, double decoupled,
                          int64_t step) {
  if (step < 1) throw py::value_error("step: expected the 1-based step count, got " + std::to_string(step));
  AdamArgs a;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;
  a.l2 = l2;
  a.l1 = l1;
  a.decoupled = decoupled;
  a.step_size = lr / (1.0 - std::pow(beta1, static_cast<double>(step)));
  a.bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step)));
  return a;
}

}  // namespace fastnn
