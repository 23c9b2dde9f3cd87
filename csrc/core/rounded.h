// Explicitly rounded arithmetic (round to nearest even, float and double), written once for device
// and host code: CUDA's __f*_rn / __d*_rn intrinsics on the device (nvcc never contracts them into
// FMAs), std::fma and the IEEE operators on the host (compile such host code with
// -ffp-contract=off). Used wherever a GPU kernel must give the CPU's bits (the augment, loss,
// optimizer, stats and train kernels of csrc/cuda, core/box_muller.h) and by their host emulation.
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define FASTNN_RN_HD __host__ __device__ __forceinline__
#else
#define FASTNN_RN_HD inline
#endif

namespace fastnn {
namespace rn {

#ifdef __CUDA_ARCH__
FASTNN_RN_HD float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
FASTNN_RN_HD double fma_rn(double a, double b, double c) { return __fma_rn(a, b, c); }
FASTNN_RN_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
FASTNN_RN_HD double mul_rn(double a, double b) { return __dmul_rn(a, b); }
FASTNN_RN_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
FASTNN_RN_HD double add_rn(double a, double b) { return __dadd_rn(a, b); }
FASTNN_RN_HD float sub_rn(float a, float b) { return __fsub_rn(a, b); }
FASTNN_RN_HD double sub_rn(double a, double b) { return __dsub_rn(a, b); }
FASTNN_RN_HD float div_rn(float a, float b) { return __fdiv_rn(a, b); }
FASTNN_RN_HD double div_rn(double a, double b) { return __ddiv_rn(a, b); }
FASTNN_RN_HD float sqrt_rn(float a) { return __fsqrt_rn(a); }
FASTNN_RN_HD double sqrt_rn(double a) { return __dsqrt_rn(a); }
FASTNN_RN_HD float abs_of(float a) { return fabsf(a); }
FASTNN_RN_HD double abs_of(double a) { return fabs(a); }
FASTNN_RN_HD float copysign_of(float a, float b) { return copysignf(a, b); }
FASTNN_RN_HD double copysign_of(double a, double b) { return copysign(a, b); }

#else
template <class T>
inline T fma_rn(T a, T b, T c) { return std::fma(a, b, c); }
template <class T>
inline T mul_rn(T a, T b) { return a * b; }
template <class T>
inline T add_rn(T a, T b) { return a + b; }
template <class T>
inline T sub_rn(T a, T b) { return a - b; }
template <class T>
inline T div_rn(T a, T b) { return a / b; }
template <class T>
inline T sqrt_rn(T a) { return std::sqrt(a); }
template <class T>
inline T abs_of(T a) { return std::fabs(a); }
template <class T>
inline T copysign_of(T a, T b) { return std::copysign(a, b); }
#endif

}  // namespace rn
}  // namespace fastnn

#undef FASTNN_RN_HD
