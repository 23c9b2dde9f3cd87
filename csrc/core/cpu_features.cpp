#include "core/cpu_features.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define FASTNN_X86 1
#endif

namespace fastnn {

const char* capability_name(CpuCapability c) {
  switch (c) {
    case CpuCapability::Baseline: return "baseline";
    case CpuCapability::Avx2: return "avx2";
    case CpuCapability::Avx512: return "avx512";
    case CpuCapability::Avx512Bf16: return "avx512_bf16";
    case CpuCapability::Avx512Amx: return "avx512_amx";
  }
  return "unknown";
}

bool parse_capability(const char* name, CpuCapability* out) {
  for (int i = 0; i <= kMaxCapability; ++i) {
    auto c = static_cast<CpuCapability>(i);
    if (std::strcmp(name, capability_name(c)) == 0) {
      *out = c;
      return true;
    }
  }
  return false;
}

bool capability_compiled(CpuCapability c) {
  switch (c) {
    case CpuCapability::Baseline: return true;
#ifdef FASTNN_HAVE_AVX2
    case CpuCapability::Avx2: return true;
#endif
#ifdef FASTNN_HAVE_AVX512
    case CpuCapability::Avx512: return true;
    case CpuCapability::Avx512Bf16: return true;
    case CpuCapability::Avx512Amx: return true;
#endif
    default: return false;
  }
}

namespace {

struct X86Features {
  bool avx2_fma = false;
  bool avx512 = false;  // F + BW + DQ + VL, with OS support for the ZMM and opmask state
  bool avx512_bf16 = false;  // and AVX512_BF16 (vdpbf16ps)
  bool amx_bf16 = false;     // and AMX-TILE + AMX-BF16, tile state enabled and granted to this process
};

X86Features detect() {
  X86Features f;
#ifdef FASTNN_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12);
  if (!(osxsave && avx)) return f;
  unsigned xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool os_ymm = (xcr0_lo & 0x6) == 0x6;          // XMM + YMM state
  const bool os_zmm = (xcr0_lo & 0xE6) == 0xE6;        // + opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool f512 = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  f.avx2_fma = os_ymm && avx2 && fma;
  f.avx512 = f.avx2_fma && os_zmm && f512 && dq && bw && vl;
  if (a >= 1) {  // leaf 7's highest subleaf
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    f.avx512_bf16 = f.avx512 && (a1 & (1u << 5));
  }
  // AMX: cpuid 7.0 EDX bit 22 (AMX-BF16) and 24 (AMX-TILE), XCR0 bits 17-18 (XTILECFG, XTILEDATA),
  // and Linux's per-process permission for the 8 KiB tile state (ARCH_REQ_XCOMP_PERM = 0x1023,
  // XFEATURE_XTILEDATA = 18), requested once here.
#ifdef __linux__
  if (f.avx512_bf16 && (d & (1u << 22)) && (d & (1u << 24)) && (xcr0_lo & 0x60000u) == 0x60000u)
    f.amx_bf16 = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#endif
#endif
  return f;
}

const X86Features& features() {
  static const X86Features f = detect();
  return f;
}

}  // namespace

bool capability_supported(CpuCapability c) {
  switch (c) {
    case CpuCapability::Baseline: return true;
    case CpuCapability::Avx2: return features().avx2_fma;
    case CpuCapability::Avx512: return features().avx512;
    case CpuCapability::Avx512Bf16: return features().avx512_bf16;
    case CpuCapability::Avx512Amx: return features().amx_bf16;
  }
  return false;
}

namespace {

// The largest cache described by cpuid's deterministic cache parameters (leaf 4 on Intel,
// 0x8000001D on AMD): virtual machines often report the host's cache through sysconf instead.
long long cpuid_llc_bytes() {
  long long best = -1;
#ifdef FASTNN_X86
  unsigned a, b, c, d;
  unsigned leaf = 4;
  if (__get_cpuid(0x80000000u, &a, &b, &c, &d) && a >= 0x8000001Du) {
    __get_cpuid(0, &a, &b, &c, &d);
    const bool amd = b == 0x68747541u || b == 0x6f677948u;  // "Auth"enticAMD, "Hygo"nGenuine
    if (amd) leaf = 0x8000001Du;
  }
  if (leaf == 4 && __get_cpuid_max(0, nullptr) < 4) return -1;
  for (unsigned sub = 0; sub < 16; ++sub) {
    __cpuid_count(leaf, sub, a, b, c, d);
    if ((a & 0x1F) == 0) break;  // no more caches
    const long long ways = ((b >> 22) & 0x3FF) + 1, parts = ((b >> 12) & 0x3FF) + 1, line = (b & 0xFFF) + 1;
    const long long size = ways * parts * line * (static_cast<long long>(c) + 1);
    if (size > best) best = size;
  }
#endif
  return best;
}

}  // namespace

long long llc_bytes() {
  static const long long bytes = [] {
    long long b = cpuid_llc_bytes();
#ifdef _SC_LEVEL3_CACHE_SIZE
    if (b <= 0) b = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return b > 0 ? b : 32ll << 20;
  }();
  return bytes;
}

CpuCapability best_capability() {
  for (int i = kMaxCapability; i > 0; --i) {
    auto c = static_cast<CpuCapability>(i);
    if (capability_compiled(c) && capability_supported(c)) return c;
  }
  return CpuCapability::Baseline;
}


// ---- the path in use ---------------------------------------------------------------------------

namespace {

std::atomic<int> g_capability{-1};

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
    throw std::invalid_argument(std::string("FASTNN_CPU_CAPABILITY: expected one of baseline, avx2, avx512, avx512_bf16, avx512_amx, got '") +
                                v + "'");
  try {
    set_capability(c);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("FASTNN_CPU_CAPABILITY=") + v + ": " + e.what());
  }
}

}  // namespace fastnn
