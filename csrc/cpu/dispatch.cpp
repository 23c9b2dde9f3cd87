// The one place that maps the CPU path in use to its kernel table.
#include "core/cpu_features.h"
#include "cpu/kernels.h"

namespace fastnn {

const CpuKernels& cpu_kernels() {
  switch (current_capability()) {
#ifdef FASTNN_HAVE_AVX512
    case CpuCapability::Avx512:
    case CpuCapability::Avx512Bf16:  // the avx512 tables; the bf16 GEMM asks for vdpbf16ps / AMX itself
    case CpuCapability::Avx512Amx:
      return avx512::kCpuKernels;
#endif
#ifdef FASTNN_HAVE_AVX2
    case CpuCapability::Avx2: return avx2::kCpuKernels;
#endif
    default: return baseline::kCpuKernels;
  }
}

}  // namespace fastnn
