// Run-time selection of the CPU kernel path: the best one the CPU supports, or the one named by
// FASTNN_CPU_CAPABILITY (read once at import), or the one a test forces.
#pragma once

#include "core/cpu_features.h"
#include "cpu/activation.h"
#include "cpu/augment.h"
#include "cpu/dropout.h"
#include "cpu/gemm.h"
#include "cpu/loss.h"
#include "cpu/optim.h"
#include "cpu/stats.h"

namespace fastnn {

CpuCapability current_capability();
// Throws std::invalid_argument naming what is available when c is not compiled or not supported.
void set_capability(CpuCapability c);
// Applies FASTNN_CPU_CAPABILITY if set (throws on an unknown or unavailable value).
void init_capability_from_env();

const ActivationKernels& activation_kernels();
const DropoutKernels& dropout_kernels();
const GemmKernels& gemm_kernels();
const OptimKernels& optim_kernels();
const LossKernels& loss_kernels();
const AugmentKernels& augment_kernels();
const StatsKernels& stats_kernels();

template <class T>
const ActivationKernelsT<T>& activation_kernels_for();
template <>
inline const ActivationKernelsT<float>& activation_kernels_for<float>() { return activation_kernels().f32; }
template <>
inline const ActivationKernelsT<double>& activation_kernels_for<double>() { return activation_kernels().f64; }

template <class T>
const DropoutKernelsT<T>& dropout_kernels_for();
template <>
inline const DropoutKernelsT<float>& dropout_kernels_for<float>() { return dropout_kernels().f32; }
template <>
inline const DropoutKernelsT<double>& dropout_kernels_for<double>() { return dropout_kernels().f64; }

template <class T>
const GemmKernelsT<T>& gemm_kernels_for();
template <>
inline const GemmKernelsT<float>& gemm_kernels_for<float>() { return gemm_kernels().f32; }
template <>
inline const GemmKernelsT<double>& gemm_kernels_for<double>() { return gemm_kernels().f64; }

template <class T>
const OptimKernelsT<T>& optim_kernels_for();
template <>
inline const OptimKernelsT<float>& optim_kernels_for<float>() { return optim_kernels().f32; }
template <>
inline const OptimKernelsT<double>& optim_kernels_for<double>() { return optim_kernels().f64; }

template <class T>
const LossKernelsT<T>& loss_kernels_for();
template <>
inline const LossKernelsT<float>& loss_kernels_for<float>() { return loss_kernels().f32; }
template <>
inline const LossKernelsT<double>& loss_kernels_for<double>() { return loss_kernels().f64; }

template <class T>
const StatsKernelsT<T>& stats_kernels_for();
template <>
inline const StatsKernelsT<float>& stats_kernels_for<float>() { return stats_kernels().f32; }
template <>
inline const StatsKernelsT<double>& stats_kernels_for<double>() { return stats_kernels().f64; }

}  // namespace fastnn
