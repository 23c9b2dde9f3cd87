// Fills this ISA's kernel table (this file is compiled once per ISA, see CMakeLists.txt).
#include "cpu/kernels.h"

#include "cpu/simd.h"

namespace fastnn {
namespace FASTNN_ISA_NS {

extern const CpuKernels kCpuKernels;
constexpr CpuKernels kCpuKernels{&kActivationKernels, &kDropoutKernels, &kGemmKernels, &kOptimKernels,
                                 &kLossKernels,       &kAugmentKernels, &kStatsKernels};

}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
