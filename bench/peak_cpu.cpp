// The instruction ceilings the GEMM benchmarks are measured against, on one core:
//   clock      a chain of dependent imul (3 cycles each on Intel and AMD since Nehalem / Zen)
//   fp32 FMA   vfmadd231ps, 12 independent accumulators, on the widest vectors the CPU has:
//              zmm (32 flops each) with AVX-512, else ymm (16 flops each) with AVX2+FMA
//   vdpbf16ps  zmm, 12 independent accumulators: 32 bf16 multiply-adds = 64 flops each
//   tdpbf16ps  AMX, 4 independent 16x16 accumulator tiles: 16*16*32 multiply-adds = 16384 flops each
// Built and run by bench/linear.py unless --no-peak (g++ with explicit ISA flags, no -march=native), or by hand:
//   g++ -O2 -mavx512f -mavx512bf16 -mamx-tile -mamx-bf16 bench/peak_cpu.cpp -o /tmp/peak_cpu && /tmp/peak_cpu
// Prints one JSON line. Each instruction runs only where cpuid (and, for AMX, Linux's permission
// for the tile state) says it can.
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

__attribute__((noinline)) void imul_chain(int64_t n) {
  int64_t x = 3;
  for (int64_t i = 0; i < n; ++i)
    asm volatile("imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0\n\t"
                 "imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0" : "+r"(x));
}

#define TWELVE(OP)                                                                                        \
  asm volatile(OP " %%zmm30, %%zmm31, %%zmm0\n\t" OP " %%zmm30, %%zmm31, %%zmm1\n\t" OP                  \
                  " %%zmm30, %%zmm31, %%zmm2\n\t" OP " %%zmm30, %%zmm31, %%zmm3\n\t" OP                  \
                  " %%zmm30, %%zmm31, %%zmm4\n\t" OP " %%zmm30, %%zmm31, %%zmm5\n\t" OP                  \
                  " %%zmm30, %%zmm31, %%zmm6\n\t" OP " %%zmm30, %%zmm31, %%zmm7\n\t" OP                  \
                  " %%zmm30, %%zmm31, %%zmm8\n\t" OP " %%zmm30, %%zmm31, %%zmm9\n\t" OP                  \
                  " %%zmm30, %%zmm31, %%zmm10\n\t" OP " %%zmm30, %%zmm31, %%zmm11\n\t" ::                \
                      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", \
                        "xmm10", "xmm11")

__attribute__((target("avx512f"), noinline)) void fma_loop(int64_t n) {
  for (int64_t i = 0; i < n; ++i) TWELVE("vfmadd231ps");
}
#define TWELVE_YMM(OP)                                                                                    \
  asm volatile(OP " %%ymm14, %%ymm15, %%ymm0\n\t" OP " %%ymm14, %%ymm15, %%ymm1\n\t" OP                  \
                  " %%ymm14, %%ymm15, %%ymm2\n\t" OP " %%ymm14, %%ymm15, %%ymm3\n\t" OP                  \
                  " %%ymm14, %%ymm15, %%ymm4\n\t" OP " %%ymm14, %%ymm15, %%ymm5\n\t" OP                  \
                  " %%ymm14, %%ymm15, %%ymm6\n\t" OP " %%ymm14, %%ymm15, %%ymm7\n\t" OP                  \
                  " %%ymm14, %%ymm15, %%ymm8\n\t" OP " %%ymm14, %%ymm15, %%ymm9\n\t" OP                  \
                  " %%ymm14, %%ymm15, %%ymm10\n\t" OP " %%ymm14, %%ymm15, %%ymm11\n\t" ::                \
                      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", \
                        "xmm10", "xmm11")
__attribute__((target("avx2,fma"), noinline)) void fma_loop_ymm(int64_t n) {
  for (int64_t i = 0; i < n; ++i) TWELVE_YMM("vfmadd231ps");
}
__attribute__((target("avx512f,avx512bf16"), noinline)) void dp_loop(int64_t n) {
  for (int64_t i = 0; i < n; ++i) TWELVE("vdpbf16ps");
}

struct alignas(64) TileCfg {
  uint8_t palette, start;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
__attribute__((target("amx-tile,amx-bf16"), noinline)) void amx_loop(int64_t n) {
  alignas(64) static uint16_t zero[16 * 32];
  // (static: GCC 12's _tile_loadconfig tells the compiler it reads 8 bytes, so the stores of a
  // local configuration may be dropped)
  static const TileCfg c = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};
  _tile_loadconfig(&c);
  _tile_loadd(4, zero, 64);
  _tile_loadd(5, zero, 64);
  _tile_loadd(6, zero, 64);
  _tile_loadd(7, zero, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t i = 0; i < n; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_release();
}

int main() {
  unsigned a, b, c, d;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx512 = b & (1u << 16), amx = (d & (1u << 22)) && (d & (1u << 24));
  const bool avx2 = b & (1u << 5);
  __cpuid(1, a, b, c, d);
  const bool fma3 = c & (1u << 12);
  __cpuid_count(7, 1, a, b, c, d);
  const bool bf16 = avx512 && (a & (1u << 5));
  const bool amx_ok = amx && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  double ghz = 0, fma = 0, dp = 0, tdp = 0;
  for (int rep = 0; rep < 3; ++rep) {  // best of 3: the machine is shared
    double t = now();
    const int64_t n = 20000000;
    imul_chain(n);
    const double g = 3.0 * 8 * n / (now() - t) / 1e9;
    ghz = g > ghz ? g : ghz;
    const int64_t m = 10000000;
    if (avx512 || (avx2 && fma3)) {
      t = now();
      avx512 ? fma_loop(m) : fma_loop_ymm(m);
      const double f = 12.0 * m * (avx512 ? 32 : 16) / (now() - t) / 1e9;
      fma = f > fma ? f : fma;
    }
    if (bf16) {
      t = now();
      dp_loop(m);
      const double f = 12.0 * m * 64 / (now() - t) / 1e9;
      dp = f > dp ? f : dp;
    }
    if (amx_ok) {
      t = now();
      amx_loop(m / 20);
      const double f = 4.0 * (m / 20) * 16384 / (now() - t) / 1e9;
      tdp = f > tdp ? f : tdp;
    }
  }
  std::printf("{\"ghz\": %.3f, \"fp32_fma_gflops\": %.1f, \"fp32_fma_bits\": %d, \"vdpbf16ps_gflops\": %.1f, "
              "\"tdpbf16ps_gflops\": %.1f}\n",
              ghz, fma, avx512 ? 512 : (avx2 && fma3) ? 256 : 0, dp, tdp);
  return 0;
}
