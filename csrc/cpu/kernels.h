// The CPU kernel table: one per ISA, each filled in one place (csrc/cpu/kernels.cpp, compiled once
// per ISA like the kernels), picked at run time by csrc/cpu/dispatch.cpp from the capability in use
// (csrc/core/cpu_features.h). Each entry points at its family's per-ISA table (activation.h, ...).
#pragma once

#include <type_traits>

#include "cpu/activation.h"
#include "cpu/augment.h"
#include "cpu/dropout.h"
#include "cpu/gemm.h"
#include "cpu/loss.h"
#include "cpu/optim.h"
#include "cpu/stats.h"

namespace fastnn {

// Pointers, not copies: the per-ISA tables are constant-initialized in their own translation
// units, so an address is a constant and no ISA-specific code runs before the dispatch.
struct CpuKernels {
  const ActivationKernels* activation;
  const DropoutKernels* dropout;
  const GemmKernels* gemm;
  const OptimKernels* optim;
  const LossKernels* loss;
  const AugmentKernels* augment;
  const StatsKernels* stats;
};

namespace baseline { extern const CpuKernels kCpuKernels; }
namespace avx2 { extern const CpuKernels kCpuKernels; }
namespace avx512 { extern const CpuKernels kCpuKernels; }

// The table of the path in use (current_capability()).
const CpuKernels& cpu_kernels();

inline const ActivationKernels& activation_kernels() { return *cpu_kernels().activation; }
inline const DropoutKernels& dropout_kernels() { return *cpu_kernels().dropout; }
inline const GemmKernels& gemm_kernels() { return *cpu_kernels().gemm; }
inline const OptimKernels& optim_kernels() { return *cpu_kernels().optim; }
inline const LossKernels& loss_kernels() { return *cpu_kernels().loss; }
inline const AugmentKernels& augment_kernels() { return *cpu_kernels().augment; }
inline const StatsKernels& stats_kernels() { return *cpu_kernels().stats; }

// The float or double half of a family's table.
template <class T, class Family>
const auto& typed(const Family& k) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "float32 or float64 kernels only");
  if constexpr (std::is_same_v<T, float>) return k.f32;
  else return k.f64;
}

template <class T> const auto& activation_kernels_for() { return typed<T>(activation_kernels()); }
template <class T> const auto& dropout_kernels_for() { return typed<T>(dropout_kernels()); }
template <class T> const auto& gemm_kernels_for() { return typed<T>(gemm_kernels()); }
template <class T> const auto& optim_kernels_for() { return typed<T>(optim_kernels()); }
template <class T> const auto& loss_kernels_for() { return typed<T>(loss_kernels()); }
template <class T> const auto& stats_kernels_for() { return typed<T>(stats_kernels()); }

}  // namespace fastnn
