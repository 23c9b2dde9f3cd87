#include "core/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace fastnn {

namespace {

std::atomic<int> g_capability{-1};

const ActivationKernels* activation_table(CpuCapability c) {
  switch (c) {
#ifdef FASTNN_HAVE_AVX512
    case CpuCapability::Avx512: return &avx512::kActivationKernels;
#endif
#ifdef FASTNN_HAVE_AVX2
    case CpuCapability::Avx2: return &avx2::kActivationKernels;
#endif
    default: return &baseline::kActivationKernels;
  }
}

const DropoutKernels* dropout_table(CpuCapability c) {
  switch (c) {
#ifdef FASTNN_HAVE_AVX512
    case CpuCapability::Avx512: return &avx512::kDropoutKernels;
#endif
#ifdef FASTNN_HAVE_AVX2
    case CpuCapability::Avx2: return &avx2::kDropoutKernels;
#endif
    default: return &baseline::kDropoutKernels;
  }
}

const GemmKernels* gemm_table(CpuCapability c) {
  switch (c) {
#ifdef FASTNN_HAVE_AVX512
    case CpuCapability::Avx512: return &avx512::kGemmKernels;
#endif
#ifdef FASTNN_HAVE_AVX2
    case CpuCapability::Avx2: return &avx2::kGemmKernels;
#endif
    default: return &baseline::kGemmKernels;
  }
}

const OptimKernels* optim_table(CpuCapability c) {
  switch (c) {
#ifdef FASTNN_HAVE_AVX512
    case CpuCapability::Avx512: return &avx512::kOptimKernels;
#endif
#ifdef FASTNN_HAVE_AVX2
    case CpuCapability::Avx2: return &avx2::kOptimKernels;
#endif
    default: return &baseline::kOptimKernels;
  }
}

const LossKernels* loss_table(CpuCapability c) {
  switch (c) {
#ifdef FASTNN_HAVE_AVX512
    case CpuCapability::Avx512: return &avx512::kLossKernels;
#endif
#ifdef FASTNN_HAVE_AVX2
    case CpuCapability::Avx2: return &avx2::kLossKernels;
#endif
    default: return &baseline::kLossKernels;
  }
}

const AugmentKernels* augment_table(CpuCapability c) {
  switch (c) {
#ifdef FASTNN_HAVE_AVX512
    case CpuCapability::Avx512: return &avx512::kAugmentKernels;
#endif
#ifdef FASTNN_HAVE_AVX2
    case CpuCapability::Avx2: return &avx2::kAugmentKernels;
#endif
    default: return &baseline::kAugmentKernels;
  }
}

const StatsKernels* stats_table(CpuCapability c) {
  switch (c) {
#ifdef FASTNN_HAVE_AVX512
    case CpuCapability::Avx512: return &avx512::kStatsKernels;
#endif
#ifdef FASTNN_HAVE_AVX2
    case CpuCapability::Avx2: return &avx2::kStatsKernels;
#endif
    default: return &baseline::kStatsKernels;
  }
}

std::string available_list() {
  std::string s;
  for (int i = 0; i <= kMaxCapability; ++i) {
    auto c = static_cast<CpuCapability>(i);
    if (capability_compiled(c) && capability_supported(c)) {
      if (!s.empty()) s += ", ";
      s += capability_name(c);
    }
  }
  return s;
}

}  // namespace

CpuCapability current_capability() {
  int c = g_capability.load(std::memory_order_relaxed);
  if (c < 0) {
    c = static_cast<int>(best_capability());
    g_capability.store(c, std::memory_order_relaxed);
  }
  return static_cast<CpuCapability>(c);
}

void set_capability(CpuCapability c) {
  if (!capability_compiled(c))
    throw std::invalid_argument(std::string("CPU capability '") + capability_name(c) +
                                "' is not compiled into this build; available: " + available_list());
  if (!capability_supported(c))
    throw std::invalid_argument(std::string("CPU capability '") + capability_name(c) +
                                "' is not supported by this CPU/OS; available: " + available_list());
  g_capability.store(static_cast<int>(c), std::memory_order_relaxed);
}

void init_capability_from_env() {
  const char* v = std::getenv("FASTNN_CPU_CAPABILITY");
  if (!v || !*v) return;
  CpuCapability c;
  if (!parse_capability(v, &c))
    throw std::invalid_argument(std::string("FASTNN_CPU_CAPABILITY: expected one of baseline, avx2, avx512, avx512_bf16, got '") +
                                v + "'");
  try {
    set_capability(c);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("FASTNN_CPU_CAPABILITY=") + v + ": " + e.what());
  }
}

// avx512_bf16 runs the avx512 tables (the GEMM asks current_capability() for vdpbf16ps itself).
static CpuCapability table_capability() {
  const CpuCapability c = current_capability();
  return c == CpuCapability::Avx512Bf16 ? CpuCapability::Avx512 : c;
}

const ActivationKernels& activation_kernels() { return *activation_table(table_capability()); }
const DropoutKernels& dropout_kernels() { return *dropout_table(table_capability()); }
const GemmKernels& gemm_kernels() { return *gemm_table(table_capability()); }
const OptimKernels& optim_kernels() { return *optim_table(table_capability()); }
const LossKernels& loss_kernels() { return *loss_table(table_capability()); }
const AugmentKernels& augment_kernels() { return *augment_table(table_capability()); }
const StatsKernels& stats_kernels() { return *stats_table(table_capability()); }

}  // namespace fastnn
