// CPU capability detection (cpuid + XGETBV) and the names of the kernel paths.
#pragma once

namespace fastnn {

// Ordered: a higher value implies every lower one. Avx512Bf16 runs the avx512 kernel tables, plus
// the vdpbf16ps micro-kernel of the bf16 GEMM; forcing avx512 on such a CPU gives the float FMA
// path of the bf16 GEMM (same bits), so the tests can run both on one machine. Avx512Amx: the
// same, with the bf16 GEMM on AMX tiles (tdpbf16ps: hardware-defined sums, not those bits).
enum class CpuCapability : int { Baseline = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3, Avx512Amx = 4 };
constexpr int kMaxCapability = 4;

const char* capability_name(CpuCapability c);
// Parses "baseline" | "avx2" | "avx512" | "avx512_bf16" | "avx512_amx"; false for anything else.
bool parse_capability(const char* name, CpuCapability* out);

// Whether this build carries kernels for c (avx2/avx512 exist only in x86-64 builds).
bool capability_compiled(CpuCapability c);
// Whether the running CPU and OS can execute c: the instructions (cpuid) and the saved register
// state (XGETBV: YMM for AVX2, opmask + ZMM for AVX-512; AVX512_BF16: cpuid 7.1 EAX bit 5).
bool capability_supported(CpuCapability c);
// The best path that is both compiled and supported.
CpuCapability best_capability();

// Size of the last-level cache in bytes (sysconf; 32 MiB when unknown). Kernels whose arrays
// exceed it write their output with non-temporal stores.
long long llc_bytes();

// The path in use: the best one, or the one FASTNN_CPU_CAPABILITY names (read once at import), or
// the one a test forces. csrc/cpu/dispatch.cpp maps it to that path's kernel table.
CpuCapability current_capability();
// Throws std::invalid_argument naming what is available when c is not compiled or not supported.
void set_capability(CpuCapability c);
// Applies FASTNN_CPU_CAPABILITY if set (throws on an unknown or unavailable value).
void init_capability_from_env();

}  // namespace fastnn
