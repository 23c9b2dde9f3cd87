// BLIS-style packed GEMM, float32 and float64, compiled once per ISA (FASTNN_ISA).
//   C (M x N, row-major, row stride ldc) = epilogue(A (M x K) . B (K x N))
// The framework (gemm_driver) owns the loops, the cache blocking, the packing and the threading;
// the micro-kernel (micro_kernel) only accumulates an MR x NR tile from two packed panels, and
// store_tile is the epilogue hook that writes it (accumulate into C, + bias, activation).
//
// Loops (BLIS order):  jc: NC columns of B  ->  pc: KC of K (B block packed, in L3)
//                      ->  ic: MC rows of A (A block packed per task, in L2)
//                      ->  jr: one NR panel of B (stays in L1)  ->  ir: one MR panel of A.
// Packed A: per MR-row panel, k-major (a[k*MR + i]); packed B: per NR-column panel, k-major
// (b[k*NR + j]); both zero-padded to full panels, so the micro-kernel has no edge cases and only
// the store handles partial tiles (masked stores on the last vector, rows beyond m skipped).
//
// Threads: C is split into one block of whole micro-panels per thread (see gemm_driver). Every C
// element is the same sequence of operations (same KC blocks, in order) on any thread, so results
// are bit-identical for any thread count; K is never split across threads.
#include "cpu/gemm.h"

#include "core/allocator.h"
#include "core/parallel.h"
#include "cpu/act_math.h"
#include "cpu/simd.h"

namespace fastnn {
namespace FASTNN_ISA_NS {
namespace {

// ---- the micro-tile and the cache blocking, per ISA ------------------------------------------
// Register budget: MR x NV accumulators + NV vectors of B + 1 broadcast of A.
//   AVX-512 (32 zmm): 14 x 2 vectors = 28 + 2 + 1  -> float 14x32, double 14x16
//   AVX2    (16 ymm):  6 x 2 vectors = 12 + 2 + 1  -> float 6x16,  double 6x8
//   baseline: a 4 x 8 scalar tile the compiler may vectorize (SSE2 on x86-64).
// Row-major C wants the vectors along N: the epilogue's bias is then one vector per column
// group, and a C row of the tile is NV contiguous (masked at the edge) stores.
//
// Blocking, for Zen 4 (per core: 32 KiB L1d, 1 MiB L2; 32 MiB L3 shared by our 2 cores):
//   KC: the B micro-panel (KC x NR, reused by every A micro-panel of the block) sized to L1:
//       KC = 32 KiB / (NR * sizeof(T)) -> 256 on AVX-512 (NR * sizeof(T) = 128 B), 512 on AVX2.
//       It does not all stay in L1 beside the streamed A micro-panel (MR x KC from L2), but the
//       longer K blocks halve the passes over C; measured on 2 threads against 24 KiB (KC 192)
//       and 48 KiB (KC 384): 24 KiB ~3-5 % slower at 2048^3 and 4096x1024x1024, 48 KiB within
//       noise of 32 KiB. K is cut into equal blocks of at most KC.
//   MC: the packed A block (MC x KC) takes ~half of L2 (512 KiB), the rest for B panels and C
//       lines passing through: MC = 512 KiB / (KC * sizeof(T)), rounded down to MR.
//   NC: the packed B block (KC x NC) stays in L3; each thread packs its own: NC = 4096 keeps
//       two of them at 8 MiB (float, AVX-512), well below the 32 MiB.
template <class T>
struct Tile;
#if FASTNN_ISA == 2
template <> struct Tile<float> { static constexpr int MR = 14, NV = 2, E1 = 4, E2 = 8; };
template <> struct Tile<double> { static constexpr int MR = 14, NV = 2, E1 = 4, E2 = 8; };
#elif FASTNN_ISA == 1
template <> struct Tile<float> { static constexpr int MR = 6, NV = 2, E1 = 2, E2 = 4; };
template <> struct Tile<double> { static constexpr int MR = 6, NV = 2, E1 = 2, E2 = 4; };
#else
template <> struct Tile<float> { static constexpr int MR = 4, NV = 8, E1 = 1, E2 = 2; };
template <> struct Tile<double> { static constexpr int MR = 4, NV = 8, E1 = 1, E2 = 2; };
#endif
// E1 < E2 < MR: shorter variants of the micro-kernel for the last A panel of a block when it has
// at most E1 or E2 valid rows (M = 128 on a 14-row tile would otherwise spend a whole tile's time
// on its last 2 rows). Each C element is the same FMA chain in every variant.

template <class T>
struct Blocking {
  static constexpr int MR = Tile<T>::MR;
  static constexpr int NR = Tile<T>::NV * Vec<T>::W;
  static constexpr int64_t KC = (32 * 1024) / (NR * sizeof(T)) < 512 ? (32 * 1024) / (NR * sizeof(T)) : 512;
  static constexpr int64_t MC = (512 * 1024) / (KC * sizeof(T)) / MR * MR;
  static constexpr int64_t NC = 4096;
};

// ---- the micro-kernel: acc (MR x NR) = sum over k < kc of a[k*AS + i] * b[k*NR + j] ----------
// (AS: the packed A panel's row count; MR <= AS for the short variants.)
template <class T, int MR, int NV, int AS>
__attribute__((always_inline)) inline void micro_kernel(int64_t kc, const T* __restrict a, const T* __restrict b,
                                                        Vec<T> (&acc)[MR][NV]) {
  using V = Vec<T>;
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = V::set1(T(0));
  for (int64_t k = 0; k < kc; ++k, a += AS, b += NV * V::W) {
    V bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * V::W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V ai = V::set1(a[i]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = fmadd(ai, bv[v], acc[i][v]);
    }
  }
}

// ---- the epilogue hook: writes the m x n valid part of the tile -------------------------------
template <class T>
struct TileEpilogue {
  bool accumulate;  // C += tile (a K block after the first)
  bool last;        // the last K block: apply bias and activation
  const T* bias;    // at the tile's first column, or null
  int act;
  const ActForward<Vec<T>>* f;
};

template <class T, int MR, int NV>
__attribute__((always_inline)) inline void store_tile(Vec<T> (&acc)[MR][NV], T* c, int64_t ldc, int64_t m,
                                                      int64_t n, const TileEpilogue<T>& e) {
  using V = Vec<T>;
  V bias[NV];
  const bool add_bias = e.last && e.bias;
  if (add_bias) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const int64_t cols = n - v * V::W;
      bias[v] = cols >= V::W ? V::load(e.bias + v * V::W) : cols > 0 ? V::load_partial(e.bias + v * V::W, cols)
                                                                      : V::set1(T(0));
    }
  }
  const bool act = e.last && e.act >= 0;
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    T* row = c + i * ldc;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const int64_t cols = n - v * V::W;
      if (cols <= 0) break;
      const bool full = cols >= V::W;
      V x = acc[i][v];
      if (e.accumulate) x = (full ? V::load(row + v * V::W) : V::load_partial(row + v * V::W, cols)) + x;
      if (add_bias) x = x + bias[v];
      if (act) x = (*e.f)(x);
      if (full) x.store(row + v * V::W);
      else x.store_partial(row + v * V::W, cols);
    }
  }
}

template <class T, int MR>
void tile(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, int64_t m, int64_t n, const TileEpilogue<T>& e) {
  constexpr int NV = Tile<T>::NV;
  Vec<T> acc[MR][NV];
  // The C tile is read (K blocks after the first) and written once the micro-kernel is done:
  // start bringing its lines in now.
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    __builtin_prefetch(c + i * ldc, 1, 3);
    __builtin_prefetch(c + i * ldc + NV * Vec<T>::W - 1, 1, 3);
  }
  micro_kernel<T, MR, NV, Tile<T>::MR>(kc, a, b, acc);
  store_tile<T, MR, NV>(acc, c, ldc, m, n, e);
}

// ---- packing --------------------------------------------------------------------------------

// Transposing packs (A with rows contiguous in k, B with columns contiguous in k: x @ W^T) move
// 16 x 16 float blocks through registers on AVX-512; each returns how many k it packed (a
// multiple of 16), the caller does the rest element by element.
#if FASTNN_ISA == 2
// r[i] = row i of a 16 x 16 block -> r[j] = column j.
inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int q = 0; q < 4; ++q) {  // r[4q + c], 128-bit lane L: rows 4q..4q+3 at column 4L + c
    r[4 * q + 0] = _mm512_shuffle_ps(t[4 * q + 0], t[4 * q + 2], 0x44);
    r[4 * q + 1] = _mm512_shuffle_ps(t[4 * q + 0], t[4 * q + 2], 0xEE);
    r[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    r[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 s0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), s1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
    const __m512 u0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88),
                 u1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
    t[c] = _mm512_shuffle_f32x4(s0, u0, 0x88);
    t[8 + c] = _mm512_shuffle_f32x4(s0, u0, 0xDD);
    t[4 + c] = _mm512_shuffle_f32x4(s1, u1, 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(s1, u1, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// rows rows of src (row i at src + i*ld, contiguous in k) -> dst[k*dld + i], k < kc rounded down to 16.
inline int64_t pack_transposed16(int64_t kc, int rows, const float* src, int64_t ld, float* dst, int64_t dld) {
  const __mmask16 keep = static_cast<__mmask16>((1u << rows) - 1u);
  int64_t k0 = 0;
  for (; k0 + 16 <= kc; k0 += 16) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_loadu_ps(src + i * ld + k0) : _mm512_setzero_ps();
    transpose16(r);
    for (int kk = 0; kk < 16; ++kk) _mm512_mask_storeu_ps(dst + (k0 + kk) * dld, keep, r[kk]);
  }
  return k0;
}
inline int64_t pack_a_fast(int64_t kc, const float* src, int64_t rs, float* dst) {
  static_assert(Tile<float>::MR <= 16, "one transposed block covers the A panel");
  return pack_transposed16(kc, Tile<float>::MR, src, rs, dst, Tile<float>::MR);
}
inline int64_t pack_b_fast(int64_t kc, const float* src, int64_t cs, float* dst) {
  constexpr int NR = Tile<float>::NV * 16;
  int64_t done = 0;
  for (int g = 0; g < NR / 16; ++g) done = pack_transposed16(kc, 16, src + g * 16 * cs, cs, dst + g * 16, NR);
  return done;
}
#else
inline int64_t pack_a_fast(int64_t, const float*, int64_t, float*) { return 0; }
inline int64_t pack_b_fast(int64_t, const float*, int64_t, float*) { return 0; }
#endif
inline int64_t pack_a_fast(int64_t, const double*, int64_t, double*) { return 0; }
inline int64_t pack_b_fast(int64_t, const double*, int64_t, double*) { return 0; }

// A block rows [0, mc) x k [0, kc) of a (element (i, k) at a[i*rs + k*cs]) into MR-row panels.
template <class T>
void pack_a(int64_t mc, int64_t kc, const T* a, int64_t rs, int64_t cs, T* dst) {
  constexpr int MR = Blocking<T>::MR;
  for (int64_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kc) {
    const int64_t mr = mc - i0 < MR ? mc - i0 : MR;
    const T* src = a + i0 * rs;
    if (cs == 1 && mr == MR) {  // rows contiguous in k: read each row as one run
      const int64_t k0 = pack_a_fast(kc, src, rs, dst);
      for (int i = 0; i < MR; ++i)
        for (int64_t k = k0; k < kc; ++k) dst[k * MR + i] = src[i * rs + k];
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t i = 0; i < mr; ++i) dst[k * MR + i] = src[i * rs + k * cs];
        for (int64_t i = mr; i < MR; ++i) dst[k * MR + i] = T(0);
      }
    }
  }
}

// One NR-column panel of B (element (k, j) at b[k*rs + j*cs]), nr <= NR valid columns.
template <class T>
void pack_b_panel(int64_t kc, int64_t nr, const T* b, int64_t rs, int64_t cs, T* dst) {
  using V = Vec<T>;
  constexpr int NR = Blocking<T>::NR;
  if (cs == 1) {  // rows of B contiguous: NR-element vector copies
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = b + k * rs;
      T* d = dst + k * NR;
      for (int64_t j = 0; j < NR; j += V::W) {
        const int64_t cols = nr - j;
        (cols >= V::W ? V::load(src + j) : cols > 0 ? V::load_partial(src + j, cols) : V::set1(T(0))).store(d + j);
      }
    }
  } else {  // columns contiguous in k (rs == 1 for an F-ordered B or the transpose of a C-ordered one)
    const int64_t k0 = rs == 1 && nr == NR ? pack_b_fast(kc, b, cs, dst) : 0;
    for (int64_t j = 0; j < nr; ++j)
      for (int64_t k = k0; k < kc; ++k) dst[k * NR + j] = b[j * cs + k * rs];
    for (int64_t j = nr; j < NR; ++j)
      for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = T(0);
  }
}

// 64-byte aligned scratch, freed on scope exit (no std:: template instantiated in a per-ISA file).
// From the host block cache: packing buffers of 1 MiB and more are reused between calls on warm,
// huge-page-backed memory (fewer TLB misses while the micro-kernel streams the panels).
template <class T>
struct Scratch {
  T* p;
  size_t bytes;
  explicit Scratch(int64_t n) : bytes((static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64 + 64) {
    p = static_cast<T*>(host_alloc(bytes));
  }
  ~Scratch() { host_free(p, bytes); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// ---- the driver -------------------------------------------------------------------------------

// The BLIS loop nest on one thread, over a sub-block of C, with its own packing buffers.
template <class T>
void gemm_block(int64_t M, int64_t N, int64_t K, const T* a, int64_t rsa, int64_t csa, const T* b, int64_t rsb,
                int64_t csb, T* c, int64_t ldc, const T* bias, const TileEpilogue<T>& proto) {
  using B = Blocking<T>;
  constexpr int64_t MR = B::MR, NR = B::NR, KC = B::KC, MC = B::MC, NC = B::NC;
  // K in equal blocks of at most KC (1024 = 6 x 171, not 5 x 192 + 64: no short last block).
  const int64_t kblocks = K > KC ? (K + KC - 1) / KC : 1;
  const int64_t kc_max = (K + kblocks - 1) / kblocks;
  const int64_t nc_max = ((N < NC ? N : NC) + NR - 1) / NR * NR;
  const int64_t mc_max = ((M < MC ? M : MC) + MR - 1) / MR * MR;
  Scratch<T> buf(kc_max * (nc_max + mc_max));
  T* const bpack_p = buf.p;
  T* const apack_p = buf.p + kc_max * nc_max;
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = N - jc < NC ? N - jc : NC;
    for (int64_t pc = 0;; pc += kc_max) {  // at least once: K == 0 still writes C (zeros + epilogue)
      const int64_t kc = K - pc < kc_max ? K - pc : kc_max;
      TileEpilogue<T> e = proto;
      e.accumulate = pc > 0;
      e.last = pc + kc >= K;
      for (int64_t jr = 0; jr < nc; jr += NR)
        pack_b_panel<T>(kc, nc - jr < NR ? nc - jr : NR, b + pc * rsb + (jc + jr) * csb, rsb, csb, bpack_p + jr * kc);
      for (int64_t ic = 0; ic < M; ic += MC) {
        const int64_t mc = M - ic < MC ? M - ic : MC;
        pack_a<T>(mc, kc, a + ic * rsa + pc * csa, rsa, csa, apack_p);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t j = jc + jr, nr = nc - jr < NR ? nc - jr : NR;
          e.bias = bias ? bias + j : nullptr;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t m = mc - ir < MR ? mc - ir : MR;
            const T* ap = apack_p + ir * kc;
            T* cp = c + (ic + ir) * ldc + j;
            const T* bp = bpack_p + jr * kc;
            if (m <= Tile<T>::E1) tile<T, Tile<T>::E1>(kc, ap, bp, cp, ldc, m, nr, e);
            else if (m <= Tile<T>::E2) tile<T, Tile<T>::E2>(kc, ap, bp, cp, ldc, m, nr, e);
            else tile<T, MR>(kc, ap, bp, cp, ldc, m, nr, e);
          }
        }
      }
      if (pc + kc >= K) break;
    }
  }
}

constexpr int64_t kMinThreadFlops = int64_t(1) << 20;  // below this a product stays on one thread

// Threads split C into one block of whole micro-panels each, along M or N (whichever has more
// panels), and run the whole loop nest on it with private packing: one pool region per call, no
// shared buffers. Each element of C is the same chain of FMAs over the same KC blocks wherever its
// block falls, so the result does not depend on the split (nor on the thread count).
template <class T>
void gemm_driver(int64_t M, int64_t N, int64_t K, const T* a, int64_t rsa, int64_t csa, const T* b, int64_t rsb,
                 int64_t csb, T* c, int64_t ldc, const GemmEpilogue<T>& ep) {
  constexpr int64_t MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  if (M <= 0 || N <= 0) return;
  const ActForward<Vec<T>> f(ep.act, ep.params);
  const TileEpilogue<T> proto{false, false, nullptr, ep.act, &f};
  const int64_t mp = (M + MR - 1) / MR, np = (N + NR - 1) / NR;
  const bool along_m = mp >= np;
  const int64_t panels = along_m ? mp : np;
  int64_t tasks = num_threads();
  if (tasks > panels) tasks = panels;
  if (2 * M * N * (K > 0 ? K : 1) < kMinThreadFlops * tasks) tasks = 1;
  parallel_for(tasks, 1, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = panels * t / tasks, p1 = panels * (t + 1) / tasks;
      if (along_m) {
        const int64_t i0 = p0 * MR, i1 = p1 * MR < M ? p1 * MR : M;
        gemm_block<T>(i1 - i0, N, K, a + i0 * rsa, rsa, csa, b, rsb, csb, c + i0 * ldc, ldc, ep.bias, proto);
      } else {
        const int64_t j0 = p0 * NR, j1 = p1 * NR < N ? p1 * NR : N;
        gemm_block<T>(M, j1 - j0, K, a, rsa, csa, b + j0 * csb, rsb, csb, c + j0, ldc, ep.bias ? ep.bias + j0 : nullptr,
                      proto);
      }
    }
  });
}

template <class T>
constexpr GemmKernelsT<T> make_table() {
  return GemmKernelsT<T>{&gemm_driver<T>, Blocking<T>::MR, Blocking<T>::NR};
}

}  // namespace

extern const GemmKernels kGemmKernels;
constexpr GemmKernels kGemmKernels{make_table<float>(), make_table<double>()};

}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
