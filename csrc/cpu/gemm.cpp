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
// Threads: C is split along M or N into whole micro-panels: one block per thread with private
// packing, or, when the unsplit operand is small, chunks claimed in turn around that operand packed
// once and shared (see gemm_driver and gemm_shared). Every C element is the same sequence of operations (same KC blocks, in order) on any thread, so results
// are bit-identical for any thread count; K is never split across threads.
#include "cpu/gemm.h"

#include <type_traits>

#include "core/allocator.h"
#include "core/cpu_features.h"
#include "core/parallel.h"
#include "cpu/act_math.h"
#include "cpu/optim_math.h"
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

// ---- bit arrays (dropout keep bits, DropConnect bits, saved activation signs) ----------------

// 64 bits starting at bit `pos` of a packed little-endian bit array (at least 57 valid; the
// arrays carry kBitPad bytes of padding so the 8-byte load never leaves them).
inline uint64_t bits_at(const uint8_t* bits, int64_t pos) {
  uint64_t w;
  __builtin_memcpy(&w, bits + (pos >> 3), sizeof(w));
  return w >> (pos & 7);
}

// The same from a row of `bytes` bytes with no padding after it (a caller's array): never reads
// past the row's end (the missing high bytes read as 0).
inline uint64_t bits_at_row(const uint8_t* row, int64_t pos, int64_t bytes) {
  const int64_t b = pos >> 3;
  uint64_t w = 0;
  if (b + 8 <= bytes) __builtin_memcpy(&w, row + b, 8);  // one load; the rest only at a row's end
  else __builtin_memcpy(&w, row + b, static_cast<size_t>(bytes - b));
  return w >> (pos & 7);
}

// ---- the epilogue hook: writes the m x n valid part of the tile -------------------------------
template <class T>
struct TileEpilogue {
  bool accumulate;  // C += tile (a K block after the first)
  bool last;        // the last K block: apply the epilogue of GemmArgs
  int64_t gi, gj;   // the tile's first row and column in the whole C
  const GemmArgs<T>* args;
  const ActForward<Vec<T>>* f;
};

// One vector of a per-column parameter (bias, PReLU weight) at columns [j, j + cols), zero-filled.
template <class T>
inline Vec<T> column_vector(const T* p, int64_t cols) {
  using V = Vec<T>;
  return cols >= V::W ? V::load(p) : cols > 0 ? V::load_partial(p, cols) : V::set1(T(0));
}

// The final tile of a weight's gradient handed to the optimizer (GemmArgs::update): per C vector
// g (+ C's partial sum of the earlier K blocks), the weight and its state at the same place are
// updated by the shared per-vector math (optim_math.h: the update kernels' bits), C is not
// written. A rolled row loop, as store_tile's.
template <class T, int MR, int NV>
__attribute__((always_inline)) inline void update_tile(Vec<T> (&acc)[MR][NV], const T* c, int64_t ldc, int64_t m,
                                                       int64_t n, const TileEpilogue<T>& e) {
  using V = Vec<T>;
  const FusedUpdate<T>& u = *e.args->update;
  const bool accumulate = e.accumulate;
  const int64_t ld = u.ld, off0 = e.gi * ld + e.gj;
  T* const w = u.w + off0;
  T* const s1 = u.s1 ? u.s1 + off0 : nullptr;
  T* const s2 = u.s2 ? u.s2 + off0 : nullptr;
  // (tiles start on a grid of Tile<T>::MR rows, or 16 on the AMX path: gi / MR is one slot row each)
  double* const ss = u.sumsq ? u.sumsq + (e.gi / Tile<T>::MR) * u.sumsq_ld + e.gj / (NV * V::W) : nullptr;
  V t[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) t[i][v] = acc[i][v];
  // The tile two to the right (the row-panel order's next but one): its weight and state lines on
  // their way while this tile and the next are updated. (A prefetch past the end is harmless.)
  constexpr int64_t kAhead = 2 * NV * V::W;
  for (int i = 0; i < m; ++i)
    for (int64_t b = 0; b < NV * V::W * static_cast<int64_t>(sizeof(T)); b += 64) {
      __builtin_prefetch(reinterpret_cast<const char*>(w + i * ld + kAhead) + b, 1, 3);
      if (s1) __builtin_prefetch(reinterpret_cast<const char*>(s1 + i * ld + kAhead) + b, 1, 3);
      if (s2) __builtin_prefetch(reinterpret_cast<const char*>(s2 + i * ld + kAhead) + b, 1, 3);
    }
  const bool sgd = u.kind == FusedUpdate<T>::kSgd;
  const SgdUpdate<V> su(u.sgd);
  const AdamUpdate<V> au(u.adam);
  const V zero = V::set1(T(0)), drop_scale = V::set1(e.args->drop_scale);
  const uint8_t* const drop_bits = e.args->drop_bits;
  const int64_t drop_ld = e.args->drop_ld;
  V sq = zero;  // the tile's squares per lane (at most 2 MR terms), added to a double once per tile
#pragma GCC unroll 1
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    const T* crow = c + i * ldc;
    const int64_t r = i * ld;
    const uint64_t keep = drop_bits ? bits_at(drop_bits, (e.gi + i) * drop_ld + e.gj) : 0;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const int64_t cols = n - v * V::W;
      if (cols <= 0) break;
      const bool full = cols >= V::W;
      const int64_t o = r + v * V::W;
      auto load = [&](const T* p) { return full ? V(V::load(p)) : V(V::load_partial(p, cols)); };
      auto store = [&](V x, T* p) {
        if (full) x.store(p);
        else x.store_partial(p, cols);
      };
      V g = t[i][v];
      if (accumulate) g = load(crow + v * V::W) + g;
      if (drop_bits)  // DropConnect's mask of the gradient, as store_tile applies it
        g = g * select(V::mask_from_bits(static_cast<uint32_t>(keep >> (v * V::W))), drop_scale, zero);
      V nw;
      if (sgd) {
        V b = su.reads_buf() ? V(load(s1 + o)) : zero;
        nw = su(g, load(w + o), b);
        if (su.writes_buf()) store(b, s1 + o);
      } else {
        V mv = load(s1 + o), vv = load(s2 + o);
        nw = au(g, load(w + o), mv, vv);
        store(mv, s1 + o);
        store(vv, s2 + o);
      }
      store(nw, w + o);
      if (ss) {
        const V q = full ? nw : V(V::load_partial(w + o, cols));  // dead lanes as zeros
        sq = fmadd(q, q, sq);
      }
    }
  }
  if (ss) {  // (per row, this was 8x the unfused kernel's lane sums: ~5 % of an MLPClassifier step)
    alignas(64) T lanes[V::W];
    sq.store(lanes);
    double sum = 0.0;
    for (int l = 0; l < V::W; ++l) sum += static_cast<double>(lanes[l]);
    *ss = sum;
  }
}

template <class T, int MR, int NV>
__attribute__((always_inline)) inline void store_tile(Vec<T> (&acc)[MR][NV], T* c, int64_t ldc, int64_t m,
                                                      int64_t n, const TileEpilogue<T>& e) {
  using V = Vec<T>;
  const GemmArgs<T>& g = *e.args;
  // An intermediate K block, or a last one with nothing to apply (no bias, activation, dropout,
  // saved values or update: a product's plain C, e.g. a backward's grad_x): C (+)= tile, unrolled.
  if (!e.last || (!g.bias && g.act == kActIdentity && !g.drop_bits && !g.z_out && !g.pos_bits && !g.update)) {
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
        if (full) x.store(row + v * V::W);
        else x.store_partial(row + v * V::W, cols);
      }
    }
    return;
  }
  if (g.update) {
    update_tile<T, MR, NV>(acc, c, ldc, m, n, e);
    return;
  }
  // The final K block: z = acc (+ C) + bias, the activation, dropout, sign bits, row by row in a
  // rolled loop (one copy of the code). Unrolled over 16 x 2 vectors with every activation inlined,
  // this was ~6000 instructions per tile function (the AMX path spent 10 % of a bf16 training step
  // in it). The tile goes through memory once, which a tile's FMAs (kc x 28 of them) hide; acc is
  // only read at constant indices, so the caller's micro-kernel keeps it in registers. Everything
  // read from g is a local: stores to C could alias g's T members, so the compiler reloaded them
  // for every row.
  const T* const gbias = g.bias;
  const int act = g.act;
  const bool prelu = act == kActPrelu;
  const uint8_t* const drop_bits = g.drop_bits;
  const int64_t drop_ld = g.drop_ld;
  T* const z_out = g.z_out;
  const int64_t ldz = g.ldz;
  uint8_t* const pos_bits = g.pos_bits;
  const int64_t pos_ld = g.pos_ld;
  const bool pos_from_y = g.pos_from_y;
  const bool accumulate = e.accumulate;
  const int64_t gi = e.gi, gj = e.gj;
  const ActForward<V>& f = *e.f;
  V bias[NV], pw[NV];
  if (gbias) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bias[v] = column_vector(gbias + gj + v * V::W, n - v * V::W);
  }
  if (prelu) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      pw[v] = g.prelu_n == 1 ? V::set1(g.prelu_w[0]) : column_vector(g.prelu_w + gj + v * V::W, n - v * V::W);
  }
  const V zero = V::set1(T(0)), drop_scale = V::set1(g.drop_scale);
  V t[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) t[i][v] = acc[i][v];
#pragma GCC unroll 1
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    T* row = c + i * ldc;
    const uint64_t keep = drop_bits ? bits_at(drop_bits, (gi + i) * drop_ld + gj) : 0;
    uint32_t pos = 0;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const int64_t cols = n - v * V::W;
      if (cols <= 0) break;
      const bool full = cols >= V::W;
      V x = t[i][v];
      if (accumulate) x = (full ? V::load(row + v * V::W) : V::load_partial(row + v * V::W, cols)) + x;
      if (gbias) x = x + bias[v];
      if (z_out) {
        T* zr = z_out + (gi + i) * ldz + gj + v * V::W;
        if (full) x.store(zr);
        else x.store_partial(zr, cols);
      }
      const V z = x;
      if (prelu) x = select(cmp_gt(x, zero), x, x * pw[v]);
      else if (act != kActIdentity) x = f(x);
      if (drop_bits) x = x * select(V::mask_from_bits(static_cast<uint32_t>(keep >> (v * V::W))), drop_scale, zero);
      if (pos_bits) pos |= to_bits(pos_from_y ? cmp_nle(x, zero) : cmp_gt(z, zero)) << (v * V::W);
      if (full) x.store(row + v * V::W);
      else x.store_partial(row + v * V::W, cols);
    }
    if (pos_bits) {  // the tile's NR bits of this row: NR divides 64 and gj is a multiple of NR
      static_assert(NV * V::W <= 32 && 64 % (NV * V::W) == 0, "a tile row's bits are one aligned chunk");
      __builtin_memcpy(pos_bits + (gi + i) * pos_ld + gj / 8, &pos, NV * V::W / 8);
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

// ---- the vdpbf16ps micro-kernel (kPackBf16Pairs panels) ----------------------------------------
// Compiled for AVX512_BF16 by function attribute only (the rest of this copy stays AVX-512F/BW/
// DQ/VL) and called only where current_capability() is avx512_bf16. Per K pair, 2 vectors of B
// (32 columns of pairs) and MR broadcast pairs of A: 2 MR vdpbf16ps, 32 multiply-adds each.
#if FASTNN_ISA == 2
constexpr bool kHaveDp = true;
template <int MR>
__attribute__((target("avx512bf16"), noinline)) void micro_kernel_dp(int64_t kcp, const float* a, const float* b,
                                                                     Vec<float> (&out)[MR][2]) {
  constexpr int AS = Tile<float>::MR;
  static_assert(Tile<float>::NV == 2, "two vectors of pairs per B row pair");
  const uint32_t* ap = reinterpret_cast<const uint32_t*>(a);
  const uint32_t* bp = reinterpret_cast<const uint32_t*>(b);
  __m512 acc[MR][2];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kcp / 2; ++p, ap += AS, bp += 32) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp), b1 = (__m512bh)_mm512_loadu_si512(bp + 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(static_cast<int>(ap[i]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    out[i][0] = Vec<float>{acc[i][0]};
    out[i][1] = Vec<float>{acc[i][1]};
  }
}
inline bool dp_enabled() { return current_capability() >= CpuCapability::Avx512Bf16; }
#else
constexpr bool kHaveDp = false;
template <int MR>
void micro_kernel_dp(int64_t, const float*, const float*, Vec<float> (&)[MR][Tile<float>::NV]) {}
inline bool dp_enabled() { return false; }
#endif
template <int MR>
void micro_kernel_dp(int64_t, const double*, const double*, Vec<double> (&)[MR][Tile<double>::NV]) {}

template <class T, int MR>
void tile_dp(int64_t kcp, const T* a, const T* b, T* c, int64_t ldc, int64_t m, int64_t n, const TileEpilogue<T>& e) {
  constexpr int NV = Tile<T>::NV;
  Vec<T> acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    __builtin_prefetch(c + i * ldc, 1, 3);
    __builtin_prefetch(c + i * ldc + NV * Vec<T>::W - 1, 1, 3);
  }
  micro_kernel_dp<MR>(kcp, a, b, acc);
  store_tile<T, MR, NV>(acc, c, ldc, m, n, e);
}

// ---- bf16 (GemmArgs::bf16) -------------------------------------------------------------------
// x rounded to bfloat16 (nearest even), kept in a float: NaN stays NaN (quieted), zero and float32
// subnormal inputs become a signed zero. This is exactly vcvtne2ps2bf16 (the Intel SDM's
// convert_fp32_to_bfloat16: DAZ, round to nearest even, NaN truncated and quieted), so the
// AVX512_BF16 paths convert with it, one instruction per 32 floats, and every other path computes
// the same bits here. (A normal input never rounds to a subnormal bf16; vdpbf16ps would read one as
// zero anyway.)
inline float round_bf16(float x) {
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  if ((u & 0x7F800000u) == 0) {
    u &= 0x80000000u;
  } else if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) {
    u = (u | 0x00400000u) & 0xFFFF0000u;
  } else {
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  }
  __builtin_memcpy(&x, &u, 4);
  return x;
}

// round_bf16 on a vector of floats, the same bits (integer ops: the float-valued panels of CPUs
// without AVX512_BF16; the scalar form costs ~10 instructions an element, ~7 % of a bf16 product).
#if FASTNN_ISA == 2
inline __m512 round_bf16_v(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __mmask16 tiny = _mm512_testn_epi32_mask(u, _mm512_set1_epi32(0x7F800000));  // zero or subnormal
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
  r = _mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
  r = _mm512_mask_and_epi32(r, tiny, u, _mm512_set1_epi32(static_cast<int>(0x80000000u)));
  return _mm512_castsi512_ps(r);
}
#elif FASTNN_ISA == 1
inline __m256 round_bf16_v(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i tiny = _mm256_cmpeq_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7F800000)), _mm256_setzero_si256());
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x00400000)), nan);
  r = _mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)));
  r = _mm256_blendv_epi8(r, _mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(0x80000000u))), tiny);
  return _mm256_castsi256_ps(r);
}
#endif
#if FASTNN_ISA >= 1
// One K pair's rows (k even, k + 1) as a kPackBf16Floats panel holds them: rounded, swapped.
template <class R>
inline void round_swap_bf16(R& even, R& odd) {
  const R e = round_bf16_v(even);
  even = round_bf16_v(odd);
  odd = e;
}
#endif

// ---- packing --------------------------------------------------------------------------------

// Transposing packs (A with rows contiguous in k, B with columns contiguous in k: x @ W^T) move
// 16 x 16 float blocks through registers on AVX-512; each returns how many k it packed (a
// multiple of 16), the caller does the rest element by element.
// Keep bits of a transposing pack: row i of the block (consecutive k) is kept where bit
// bit0 + i * ld + k of bits is set, and then scaled (DropConnect of a weight row).
struct RowBits {
  const uint8_t* bits = nullptr;
  int64_t bit0 = 0, ld = 0;
  float scale = 1.0f;
};

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

// The transposing block of this ISA: kTB x kTB floats.
constexpr int kTB = 16;

// rows rows of src (row i at src + i*ld, contiguous in k) -> dst[k*dld + i], k < kc rounded down to 16;
// with bf16, as bf16_panel leaves a kPackBf16Floats panel (rounded, each K pair's rows swapped).
inline int64_t pack_transposed(int64_t kc, int rows, const float* src, int64_t ld, float* dst, int64_t dld,
                                 const RowBits& rb, bool bf16) {
  const __mmask16 keep = static_cast<__mmask16>((1u << rows) - 1u);
  const __m512 scale = _mm512_set1_ps(rb.scale);
  int64_t k0 = 0;
  for (; k0 + 16 <= kc; k0 += 16) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_loadu_ps(src + i * ld + k0) : _mm512_setzero_ps();
    if (rb.bits) {  // x * (keep ? scale : 0), as dropout computes it
      for (int i = 0; i < rows; ++i) {
        const auto m = static_cast<__mmask16>(bits_at(rb.bits, rb.bit0 + i * rb.ld + k0));
        r[i] = _mm512_mul_ps(r[i], _mm512_maskz_mov_ps(m, scale));
      }
    }
    transpose16(r);
    if (bf16)
      for (int kk = 0; kk < 16; kk += 2) round_swap_bf16(r[kk], r[kk + 1]);
    for (int kk = 0; kk < 16; ++kk) _mm512_mask_storeu_ps(dst + (k0 + kk) * dld, keep, r[kk]);
  }
  return k0;
}
#elif FASTNN_ISA == 1

// r[i] = row i of an 8 x 8 block -> r[j] = column j.
inline void transpose8(__m256 (&r)[8]) {
  __m256 t[8], s[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 4h..4h+3: s[4h + c] holds column c (and c + 4) of them
    s[4 * h + 0] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0x44);
    s[4 * h + 1] = _mm256_shuffle_ps(t[4 * h + 0], t[4 * h + 2], 0xEE);
    s[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    s[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x20);
    r[4 + c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x31);
  }
}

constexpr int kTB = 8;

// rows <= 8 rows of src (row i at src + i*ld, contiguous in k) -> dst[k*dld + i], k < kc rounded
// down to 8; with bits, row i is kept where bit bit0 + i*ld + k is set, then scaled; with bf16, as
// bf16_panel leaves a kPackBf16Floats panel (rounded, each K pair's rows swapped).
inline int64_t pack_transposed(int64_t kc, int rows, const float* src, int64_t ld, float* dst, int64_t dld,
                                const RowBits& rb, bool bf16) {
  const Vec<float> scale = Vec<float>::set1(rb.scale), zero = Vec<float>::set1(0.0f);
  int64_t k0 = 0;
  for (; k0 + 8 <= kc; k0 += 8) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm256_loadu_ps(src + i * ld + k0) : _mm256_setzero_ps();
    if (rb.bits) {  // x * (keep ? scale : 0), as dropout computes it
      for (int i = 0; i < rows; ++i) {
        const auto m = Vec<float>::mask_from_bits(static_cast<uint32_t>(bits_at(rb.bits, rb.bit0 + i * rb.ld + k0)));
        r[i] = _mm256_mul_ps(r[i], select(m, scale, zero).v);
      }
    }
    transpose8(r);
    if (bf16)
      for (int kk = 0; kk < 8; kk += 2) round_swap_bf16(r[kk], r[kk + 1]);
    for (int kk = 0; kk < 8; ++kk) Vec<float>{r[kk]}.store_partial(dst + (k0 + kk) * dld, rows);
  }
  return k0;
}
#endif

#if FASTNN_ISA >= 1
inline int64_t pack_a_fast(int64_t kc, const float* src, int64_t rs, float* dst, bool bf16) {
  static_assert(Tile<float>::MR <= kTB, "one transposed block covers the A panel");
  return pack_transposed(kc, Tile<float>::MR, src, rs, dst, Tile<float>::MR, RowBits{}, bf16);
}
// B columns j (each contiguous in k, at src + j*cs); with bits, column j's keep bits start at
// bit0 + j * ld (a weight row's DropConnect bits).
inline int64_t pack_b_fast(int64_t kc, const float* src, int64_t cs, float* dst, const RowBits& rb, bool bf16) {
  constexpr int NR = Tile<float>::NV * Vec<float>::W;
  static_assert(NR % kTB == 0, "the B panel is whole transposing blocks");
  int64_t done = 0;
  for (int g = 0; g < NR / kTB; ++g) {
    RowBits r = rb;
    r.bit0 += g * kTB * rb.ld;
    done = pack_transposed(kc, kTB, src + g * kTB * cs, cs, dst + g * kTB, NR, r, bf16);
  }
  return done;
}
constexpr bool kFastBitsPack = true;
#else
inline int64_t pack_a_fast(int64_t, const float*, int64_t, float*, bool) { return 0; }
inline int64_t pack_b_fast(int64_t, const float*, int64_t, float*, const RowBits&, bool) { return 0; }
constexpr bool kFastBitsPack = false;
#endif
inline int64_t pack_a_fast(int64_t, const double*, int64_t, double*, bool) { return 0; }
inline int64_t pack_b_fast(int64_t, const double*, int64_t, double*, const RowBits&, bool) { return 0; }

// How a panel is packed: float, bf16 values in floats (K pairs swapped: the float micro-kernel walks
// each pair odd k first, as vdpbf16ps sums it), or bf16 pairs for vdpbf16ps.
enum PackMode : int { kPackF32 = 0, kPackBf16Floats = 1, kPackBf16Pairs = 2 };

#if FASTNN_ISA == 2
// The mask of the first n of 16 lanes (none for n <= 0, all for n >= 16).
inline __mmask16 first_n(int64_t n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1u); }

// vcvtne2ps2bf16 (round_bf16's rule) on AVX512_BF16 CPUs: the pair packing of the vdpbf16ps path
// and the AMX path's operands. Functions with the target attribute, called only where
// current_capability() has AVX512_BF16 (kPackBf16Pairs panels, AMX).
// 32 consecutive floats (k, k+1, ...; `valid` of them, the rest zero) -> 16 words of K pairs.
__attribute__((target("avx512bf16"))) inline __m512i bf16_pairs32(const float* p, int64_t valid) {
  const __m512 lo = _mm512_maskz_loadu_ps(first_n(valid), p), hi = _mm512_maskz_loadu_ps(first_n(valid - 16), p + 16);
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // 16-bit lanes 0-15 from lo, 16-31 from hi
}
// Word j = bf16(lo[j]) | bf16(hi[j]) << 16: 16 elements of two K rows (k even, k + 1) as pairs.
__attribute__((target("avx512bf16"))) inline __m512i bf16_interleave(__m512 lo, __m512 hi) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                       5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}
inline void transpose16_words(__m512i (&w)[16]) {
  __m512 r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_castsi512_ps(w[i]);
  transpose16(r);
  for (int i = 0; i < 16; ++i) w[i] = _mm512_castps_si512(r[i]);
}

// A panel of bf16 pairs (word (p, j) at dst[p * width + j], p < kcp / 2) from up to 16 sources
// contiguous in k (source j at src + j * ld, kc elements: A's rows, or B's columns of x @ W^T):
// 32 floats of each converted to 16 pairs, 16 x 16 words transposed in registers, no float copy in
// between. Sources rows.. up to `lanes` are zero; lanes (<= 16) words are stored per pair.
__attribute__((target("avx512bf16"), noinline)) void pairs_from_k_runs(int64_t kc, int rows, int lanes,
                                                                        const float* src, int64_t ld, uint32_t* dst,
                                                                        int64_t width) {
  const __mmask16 store = first_n(lanes);
  const int64_t pairs = (kc + 1) / 2;
  for (int64_t k = 0; k < kc; k += 32) {
    __m512i w[16];
    for (int j = 0; j < 16; ++j) w[j] = j < rows ? bf16_pairs32(src + j * ld + k, kc - k) : _mm512_setzero_si512();
    transpose16_words(w);
    const int64_t q1 = pairs - k / 2 < 16 ? pairs - k / 2 : 16;
    for (int64_t q = 0; q < q1; ++q) _mm512_mask_storeu_epi32(dst + (k / 2 + q) * width, store, w[q]);
  }
}

// The pairs of a float panel in place (kcp rows of `width` floats, the pad row already zero): one
// word per element j holding bf16 (2p, j) low and (2p+1, j) high, written at or before the bytes
// it was read from.
__attribute__((target("avx512bf16"), noinline)) void pairs_in_place(float* p, int64_t kcp, int64_t width) {
  uint32_t* w = reinterpret_cast<uint32_t*>(p);
  for (int64_t k = 0; k < kcp; k += 2) {
    const float* r0 = p + k * width;
    const float* r1 = r0 + width;
    for (int64_t j = 0; j < width; j += 16) {  // 16 columns a vector (masked for the A panels' 14)
      const __mmask16 m = first_n(width - j);
      const __m512i v = bf16_interleave(_mm512_maskz_loadu_ps(m, r0 + j), _mm512_maskz_loadu_ps(m, r1 + j));
      _mm512_mask_storeu_epi32(w + (k / 2) * width + j, m, v);
    }
  }
}

// A panel of bf16 pairs from rows contiguous along the panel (element (k, j) at src[k rs + j]: B's
// rows, or the columns of A = gz^T in the weight gradient): rows 2p and 2p + 1 converted and
// paired in registers, no float copy in between (a B panel's float32 form is twice the bf16 one:
// 64 KiB at KC 512, more than L1). Lanes valid.. of the width and the pad row of an odd kc are zero.
__attribute__((target("avx512bf16"), noinline)) void pairs_from_rows(int64_t kc, int64_t valid, int64_t width,
                                                                      const float* src, int64_t rs, uint32_t* w) {
  for (int64_t k = 0; k < kc; k += 2, w += width) {
    const float* r0 = src + k * rs;
    const bool pair = k + 1 < kc;
    for (int64_t j = 0; j < width; j += 16) {
      const __mmask16 m = first_n(valid - j);
      const __m512 lo = _mm512_maskz_loadu_ps(m, r0 + j), hi = pair ? _mm512_maskz_loadu_ps(m, r0 + rs + j)
                                                                     : _mm512_setzero_ps();
      _mm512_mask_storeu_epi32(w + j, first_n(width - j), bf16_interleave(lo, hi));
    }
  }
}
#endif

// A packed panel of kc rows (k-major, `width` elements per k) padded to kcp = kc rounded up to
// even: row kc zeroed, every value rounded, then per K pair p either rows 2p, 2p+1 swapped
// (kPackBf16Floats) or bf16 pairs (kPackBf16Pairs, AVX512_BF16 only: pairs_in_place).
inline void bf16_panel(float* p, int64_t kc, int64_t kcp, int64_t width, int mode) {
  for (int64_t j = 0; j < width && kcp > kc; ++j) p[kc * width + j] = 0.0f;
#if FASTNN_ISA == 2
  if (mode == kPackBf16Pairs) return pairs_in_place(p, kcp, width);
#endif
#if FASTNN_ISA >= 1
  using V = Vec<float>;
  if (width % V::W == 0) {  // B panels: each row pair rounded and swapped in vectors
    for (int64_t k = 0; k < kcp; k += 2) {
      float* r0 = p + k * width;
      float* r1 = r0 + width;
      for (int64_t j = 0; j < width; j += V::W) {
        V x0 = V::load(r0 + j), x1 = V::load(r1 + j);
        round_swap_bf16(x0.v, x1.v);
        x0.store(r0 + j);
        x1.store(r1 + j);
      }
    }
    return;
  }
  const int64_t n = kcp * width, nv = n / V::W * V::W;  // A panels (MR wide): rounded as one run,
  for (int64_t i = 0; i < nv; i += V::W) V{round_bf16_v(V::load(p + i).v)}.store(p + i);
  for (int64_t i = nv; i < n; ++i) p[i] = round_bf16(p[i]);
  for (int64_t k = 0; k < kcp; k += 2)  // then the rows of each pair swapped
    for (int64_t j = 0; j < width; ++j) {
      const float x0 = p[k * width + j];
      p[k * width + j] = p[(k + 1) * width + j];
      p[(k + 1) * width + j] = x0;
    }
#else
  for (int64_t k = 0; k < kcp; k += 2) {
    float* r0 = p + k * width;
    float* r1 = r0 + width;
    for (int64_t j = 0; j < width; ++j) {
      const float x0 = round_bf16(r0[j]), x1 = round_bf16(r1[j]);
      r0[j] = x1;
      r1[j] = x0;
    }
  }
#endif
}
inline void bf16_panel(double*, int64_t, int64_t, int64_t, int) {}

// K block length as packed: even under bf16 (whole K pairs), the pad row zero.
inline int64_t k_packed(int64_t kc, int mode) { return mode != kPackF32 ? (kc + 1) / 2 * 2 : kc; }

// A block rows [0, mc) x k [0, kc) of a (element (i, k) at a[i*rs + k*cs]) into MR-row panels,
// minus the shifts (rsh[i], csh[k]; null for none).
template <class T>
void pack_a(int64_t mc, int64_t kc, const T* a, int64_t rs, int64_t cs, T* dst, const T* rsh, const T* csh,
            int bf16) {
  using V = Vec<T>;
  constexpr int MR = Blocking<T>::MR;
  const int64_t kcp = k_packed(kc, bf16);
  for (int64_t i0 = 0; i0 < mc; i0 += MR, dst += MR * kcp) {
    const int64_t mr = mc - i0 < MR ? mc - i0 : MR;
    const T* src = a + i0 * rs;
#if FASTNN_ISA == 2
    if constexpr (sizeof(T) == 4) {
      static_assert(Blocking<float>::MR <= 16, "one transposed block covers the A panel");
      if (bf16 == kPackBf16Pairs && !rsh && !csh && (cs == 1 || rs == 1)) {  // converted in registers
        uint32_t* w = reinterpret_cast<uint32_t*>(dst);
        if (cs == 1) pairs_from_k_runs(kc, static_cast<int>(mr), MR, src, rs, w, MR);  // rows contiguous in k
        else pairs_from_rows(kc, mr, MR, src, cs, w);  // columns contiguous (gz^T of the weight gradient)
        continue;
      }
    }
#endif
    int64_t ready = 0;  // rows [0, ready) already in bf16 form (rounded in registers, pairs swapped)
    if (cs == 1 && mr == MR) {  // rows contiguous in k: read each row as one run
      const bool fuse = bf16 == kPackBf16Floats && !rsh && !csh;
      const int64_t k0 = pack_a_fast(kc, src, rs, dst, fuse);
      if (fuse) ready = k0;
      for (int i = 0; i < MR; ++i)
        for (int64_t k = k0; k < kc; ++k) dst[k * MR + i] = src[i * rs + k];
    } else if (rs == 1) {  // columns contiguous (a transposed C-ordered operand): a copy per k
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t i = 0; i < MR; i += V::W) {
          const int64_t rows = mr - i;
          (rows >= V::W ? V::load(src + k * cs + i) : rows > 0 ? V::load_partial(src + k * cs + i, rows)
                                                              : V::set1(T(0)))
              .store_partial(dst + k * MR + i, MR - i < V::W ? MR - i : V::W);
        }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t i = 0; i < mr; ++i) dst[k * MR + i] = src[i * rs + k * cs];
        for (int64_t i = mr; i < MR; ++i) dst[k * MR + i] = T(0);
      }
    }
    if (rsh || csh) {  // (a - rsh[i]) - csh[k] on the valid rows, V::W rows at a time; padding rows stay 0
      T r[MR + V::W];
      for (int i = 0; i < MR + V::W; ++i) r[i] = rsh && i < mr ? rsh[i0 + i] : T(0);
      for (int64_t k = 0; k < kc; ++k) {
        const V ck = V::set1(csh ? csh[k] : T(0));
        T* p = dst + k * MR;
        for (int64_t i = 0; i < mr; i += V::W) {
          const int64_t rows = mr - i < V::W ? mr - i : V::W;
          const V x = (V::load_partial(p + i, rows) - V::load_partial(r + i, rows)) - ck;
          x.store_partial(p + i, rows);
        }
      }
    }
    if (bf16) bf16_panel(dst + ready * MR, kc - ready, kcp - ready, MR, bf16);
  }
}

// What pack_b_panel applies besides the copy: the column shift and the keep bits, all indexed
// from the panel's first (k, j) in the whole B.
template <class T>
struct BPrologue {
  const T* csh = nullptr;  // at the panel's first column
  const uint8_t* bits = nullptr;
  int64_t bit0 = 0, brs = 0, bcs = 0;  // bit of (k, j) in the panel: bit0 + k*brs + j*bcs
  T scale = T(1);
};

// One NR-column panel of B (element (k, j) at b[k*rs + j*cs]), nr <= NR valid columns.
template <class T>
void pack_b_panel(int64_t kc, int64_t nr, const T* b, int64_t rs, int64_t cs, T* dst, const BPrologue<T>& pro,
                  int bf16) {
  using V = Vec<T>;
  constexpr int NR = Blocking<T>::NR;
#if FASTNN_ISA == 2
  if constexpr (sizeof(T) == 4) {  // bf16 pairs converted in registers, no float panel in between
    if (bf16 == kPackBf16Pairs && !pro.csh && !pro.bits) {
      uint32_t* w = reinterpret_cast<uint32_t*>(dst);
      if (cs == 1) return pairs_from_rows(kc, nr, NR, b, rs, w);
      if (rs == 1) {  // columns contiguous in k (x @ W^T): 16 columns a transpose
        static_assert(NR == 32, "two groups of 16 columns");
        pairs_from_k_runs(kc, static_cast<int>(nr < 16 ? nr : 16), 16, b, cs, w, NR);
        pairs_from_k_runs(kc, static_cast<int>(nr > 16 ? nr - 16 : 0), 16, b + 16 * cs, cs, w + 16, NR);
        return;
      }
    }
  }
#endif
  bool masked = false;  // keep bits already applied
  int64_t ready = 0;     // rows [0, ready) already in bf16 form (rounded in registers, pairs swapped)
  if (cs == 1) {  // rows of B contiguous: NR-element vector copies
    const auto row = [&](int64_t k, int64_t j) {
      const int64_t cols = nr - j;
      const T* src = b + k * rs + j;
      return cols >= V::W ? V::load(src) : cols > 0 ? V::load_partial(src, cols) : V::set1(T(0));
    };
#if FASTNN_ISA >= 1
    if constexpr (sizeof(T) == 4) {
      if (bf16 == kPackBf16Floats && !pro.csh && !pro.bits) {  // whole K pairs rounded and swapped on the way
        for (; ready + 2 <= kc; ready += 2)
          for (int64_t j = 0; j < NR; j += V::W) {
            V r0 = row(ready, j), r1 = row(ready + 1, j);
            round_swap_bf16(r0.v, r1.v);
            r0.store(dst + ready * NR + j);
            r1.store(dst + (ready + 1) * NR + j);
          }
      }
    }
#endif
    for (int64_t k = ready; k < kc; ++k)
      for (int64_t j = 0; j < NR; j += V::W) row(k, j).store(dst + k * NR + j);
  } else {  // columns contiguous in k (rs == 1 for an F-ordered B or the transpose of a C-ordered one)
    int64_t k0 = 0;
    if (rs == 1 && nr == NR && !pro.csh && (!pro.bits || (kFastBitsPack && pro.brs == 1))) {
      RowBits rb;
      if (pro.bits) {
        rb.bits = pro.bits;
        rb.bit0 = pro.bit0;
        rb.ld = pro.bcs;
        rb.scale = static_cast<float>(pro.scale);
      }
      k0 = pack_b_fast(kc, b, cs, dst, rb, bf16 == kPackBf16Floats);
      masked = k0 > 0;
      if (bf16 == kPackBf16Floats) ready = k0;
      if (masked && k0 < kc) {  // the k tail, element by element, masked here
        for (int64_t j = 0; j < nr; ++j)
          for (int64_t k = k0; k < kc; ++k) {
            T w = b[j * cs + k];
            if (pro.bits) w = w * ((bits_at(pro.bits, pro.bit0 + k + j * pro.bcs) & 1) ? pro.scale : T(0));
            dst[k * NR + j] = w;
          }
        k0 = kc;
      }
    }
    for (int64_t j = 0; j < nr; ++j)
      for (int64_t k = k0; k < kc; ++k) dst[k * NR + j] = b[j * cs + k * rs];
    for (int64_t j = nr; j < NR; ++j)
      for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = T(0);
  }
  if (pro.csh) {  // the valid columns, V::W at a time; padding columns stay 0
    V sh[NR / V::W];
    for (int64_t j = 0; j < NR; j += V::W)
      sh[j / V::W] = nr - j >= V::W ? V::load(pro.csh + j) : nr > j ? V::load_partial(pro.csh + j, nr - j)
                                                                     : V::set1(T(0));
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = 0; j < NR; j += V::W) (V::load(dst + k * NR + j) - sh[j / V::W]).store(dst + k * NR + j);
  }
  if (pro.bits && !masked) {  // x * (keep ? scale : 0), as dropout computes it
    const V scale = V::set1(pro.scale), zero = V::set1(T(0));
    if (pro.bcs == 1) {  // bits run along j: one 64-bit fetch per row of the panel
      for (int64_t k = 0; k < kc; ++k) {
        const uint64_t keep = bits_at(pro.bits, pro.bit0 + k * pro.brs);
        for (int64_t j = 0; j < NR; j += V::W) {
          const V s = select(V::mask_from_bits(static_cast<uint32_t>(keep >> j)), scale, zero);
          (V::load(dst + k * NR + j) * s).store(dst + k * NR + j);
        }
      }
    } else {
      for (int64_t j = 0; j < nr; ++j)
        for (int64_t k = 0; k < kc; ++k) {
          const bool kept = bits_at(pro.bits, pro.bit0 + k * pro.brs + j * pro.bcs) & 1;
          dst[k * NR + j] = dst[k * NR + j] * (kept ? pro.scale : T(0));
        }
    }
  }
  if (bf16) bf16_panel(dst + ready * NR, kc - ready, k_packed(kc, bf16) - ready, NR, bf16);
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

template <class T>
struct Problem {
  int64_t M, N, K;
  const T* a;
  int64_t rsa, csa;
  const T* b;
  int64_t rsb, csb;
  T* c;
  int64_t ldc;
  const GemmArgs<T>* args;
  const ActForward<Vec<T>>* f;
};

// K in equal blocks of at most KC (1024 = 6 x 171, not 5 x 192 + 64: no short last block).
// Under bf16 the blocks are even (whole K pairs; only the last may be odd, padded when packed) and
// at most 512 on every ISA, so each C element is the same sum of block partials on every path. 512:
// the vdpbf16ps B micro-panel (512 x 32 bf16) then fills L1 as the float32 one does at KC 256, and
// C is passed over half as often as at 256 (1024^3 on Zen 4: +5-9 %, 1 and 2 threads).
constexpr int64_t kKcBf16 = 512;
template <class T>
inline int64_t k_block(int64_t K, bool bf16) {
  const int64_t KC = bf16 ? kKcBf16 : Blocking<T>::KC;
  const int64_t kblocks = K > KC ? (K + KC - 1) / KC : 1;
  const int64_t kc = (K + kblocks - 1) / kblocks;
  return bf16 ? (kc + 1) / 2 * 2 : kc;
}

constexpr int64_t kMinThreadFlops = int64_t(1) << 20;  // below this a product stays on one thread

// ---- the AMX bf16 GEMM (capability avx512_amx) --------------------------------------------------
// C (M x N) = epilogue(bf16(A) . bf16(B)) on AMX tiles: tdpbf16ps multiplies a 16 x 32 bf16 tile of
// A by a 32 x 16 tile of B (stored as 16 rows of K pairs, "VNNI") into a 16 x 16 float tile, 16 K
// pairs per instruction (8192 multiply-adds; measured here ~1.2 TFLOP/s per core, 6.6x the float32
// FMA peak). The sum order inside a tdpbf16ps is the hardware's (measured on Xeon model 207: it
// matches neither the pairwise float32 chain of the other paths nor a single rounding), so this
// path is within the written tolerance (K * 2^-24 * |A||B|) of the others, not bit-identical; each C
// element is the same chain of tile products over all of K (from zero, in K order) wherever its
// 32 x 32 block falls, so the result does not depend on the thread count.
//   Operands, converted once per call (vcvtne2ps2bf16, round_bf16's rule) and shared by the threads:
//   A as bf16 rows [Mp][K2] (Mp = M rounded up to 32, K2 = K rounded up to 32, zero padded);
//   B as 32-bit words [Np / 16 column groups][K2 / 2 pairs][16 columns], word = bf16(2p) | bf16(2p+1) << 16.
//   Tiles: 0-3 the 2 x 2 C tiles of a 32 x 32 block, 4-5 A (two 16-row halves), 6-7 B (two 16-column halves).
#if FASTNN_ISA == 2
constexpr bool kHaveAmx = true;
inline bool amx_enabled() { return current_capability() == CpuCapability::Avx512Amx; }

// Operands converted with vcvtne2ps2bf16 (bf16_pairs32, bf16_interleave: round_bf16's rule).
inline uint32_t bf16_bits(float x) {  // (the scalar conversion of odd layouts: round_bf16's rule)
  x = round_bf16(x);
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  return u >> 16;
}

// Rows [r0, r1) of the bf16 A (row stride K2 elements): element (i, k) of A at a[i*rs + k*cs].
__attribute__((target("avx512bf16"))) void amx_convert_a(const float* a, int64_t rs, int64_t cs, int64_t M, int64_t K, int64_t K2, uint16_t* dst,
                   int64_t r0, int64_t r1) {
  if (cs == 1) {  // rows contiguous in k
    for (int64_t i = r0; i < r1; ++i) {
      uint32_t* d = reinterpret_cast<uint32_t*>(dst + i * K2);
      for (int64_t k = 0; k < K2; k += 32)
        _mm512_storeu_si512(d + k / 2, i < M ? bf16_pairs32(a + i * rs + k, K - k) : _mm512_setzero_si512());
    }
  } else if (rs == 1) {  // columns contiguous (a transposed operand): 16 rows x 16 K pairs per transpose
    for (int64_t i0 = r0; i0 < r1; i0 += 16) {
      const __mmask16 rows = first_n(M - i0);
      for (int64_t k = 0; k < K2; k += 32) {
        __m512i w[16];
        for (int q = 0; q < 16; ++q) {
          const int64_t k0 = k + 2 * q;
          const __m512 lo = k0 < K ? _mm512_maskz_loadu_ps(rows, a + i0 + k0 * cs) : _mm512_setzero_ps();
          const __m512 hi = k0 + 1 < K ? _mm512_maskz_loadu_ps(rows, a + i0 + (k0 + 1) * cs) : _mm512_setzero_ps();
          w[q] = bf16_interleave(lo, hi);
        }
        transpose16_words(w);
        for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + (i0 + i) * K2 + k, w[i]);
      }
    }
  } else {
    for (int64_t i = r0; i < r1; ++i)
      for (int64_t k = 0; k < K2; ++k)
        dst[i * K2 + k] = i < M && k < K ? static_cast<uint16_t>(bf16_bits(a[i * rs + k * cs])) : 0;
  }
}

// Column groups [g0, g1) of the VNNI B: element (k, j) of B at b[k*rs + j*cs].
__attribute__((target("avx512bf16"))) void amx_convert_b(const float* b, int64_t rs, int64_t cs, int64_t N, int64_t K, int64_t K2, uint32_t* dst,
                   int64_t g0, int64_t g1) {
  const int64_t P2 = K2 / 2, kp = (K + 1) / 2;  // pairs [kp, P2) are the zero pad
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t j0 = g * 16;
    uint32_t* d = dst + g * P2 * 16;
    if (cs == 1) {  // rows of B contiguous in j: the vdpbf16ps path's panel packing, 16 columns wide
      pairs_from_rows(K, N - j0, 16, b + j0, rs, d);
    } else if (rs == 1) {  // columns contiguous in k (W^T of a C-ordered weight): 16 columns x 16 pairs
      pairs_from_k_runs(K, static_cast<int>(N - j0 < 16 ? N - j0 : 16), 16, b + j0 * cs, cs, d, 16);
    } else {
      for (int64_t p = 0; p < kp; ++p)
        for (int64_t j = 0; j < 16; ++j) {
          const bool in = j0 + j < N;
          const uint32_t lo = in && 2 * p < K ? bf16_bits(b[2 * p * rs + (j0 + j) * cs]) : 0;
          const uint32_t hi = in && 2 * p + 1 < K ? bf16_bits(b[(2 * p + 1) * rs + (j0 + j) * cs]) : 0;
          d[p * 16 + j] = lo | (hi << 16);
        }
    }
    for (int64_t p = kp; p < P2; ++p) _mm512_storeu_si512(d + p * 16, _mm512_setzero_si512());
  }
}

struct alignas(64) AmxTileConfig {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Palette 1, tiles 0-7 of 16 rows x 64 bytes. Static: GCC 12's _tile_loadconfig declares an 8-byte
// memory operand, so the stores of a local configuration could be dropped.
__attribute__((target("amx-tile"), noinline)) void amx_begin() {
  static const AmxTileConfig cfg = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};
  _tile_loadconfig(&cfg);
}
__attribute__((target("amx-tile"), noinline)) void amx_end() { _tile_release(); }

// The 32 x 32 float block c (row stride 32) = A rows a (two 16-row halves K2 apart... 16 * K2) . B
// column groups b, b + P2 * 16 (each 16 columns), over K2 (a multiple of 32).
__attribute__((target("amx-tile,amx-bf16"), noinline)) void amx_block(const uint16_t* a, const uint32_t* b,
                                                                      int64_t K2, float* c) {
  const uint16_t* a1 = a + 16 * K2;
  const uint32_t* b1 = b + (K2 / 2) * 16;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t k = 0; k < K2; k += 32) {
    _tile_loadd(4, a + k, K2 * 2);
    _tile_loadd(5, a1 + k, K2 * 2);
    _tile_loadd(6, b + k * 8, 64);
    _tile_loadd(7, b1 + k * 8, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, 128);
  _tile_stored(1, c + 16, 128);
  _tile_stored(2, c + 16 * 32, 128);
  _tile_stored(3, c + 16 * 32 + 16, 128);
}

void gemm_amx(const Problem<float>& P) {
  const int64_t M = P.M, N = P.N, K = P.K;
  const int64_t K2 = (K + 31) / 32 * 32, Mp = (M + 31) / 32 * 32, Np = (N + 31) / 32 * 32;
  const int64_t mb = Mp / 32, nb = Np / 32;
  // bf16 A and VNNI B: 2 bytes per element each (uint16 counted in floats, rounded up)
  Scratch<float> buf((Mp * K2 + Np * K2) / 2 + 16);
  uint16_t* const abf = reinterpret_cast<uint16_t*>(buf.p);
  uint32_t* const bv = reinterpret_cast<uint32_t*>(abf + Mp * K2);
  const int64_t work = 2 * M * N * (K > 0 ? K : 1);
  const bool threaded = work >= kMinThreadFlops * 2;
  const int64_t row_grain = threaded ? (kGrainElements + K2 - 1) / K2 / 16 + 1 : Mp;
  parallel_for(Mp / 16, row_grain, 1, [&](int64_t b0, int64_t b1) {
    amx_convert_a(P.a, P.rsa, P.csa, M, K, K2, abf, b0 * 16, b1 * 16);
  });
  parallel_for(Np / 16, threaded ? row_grain : Np, 1, [&](int64_t g0, int64_t g1) {
    amx_convert_b(P.b, P.rsb, P.csb, N, K, K2, bv, g0, g1);
  });
  const GemmArgs<float>& g = *P.args;
  // Blocks in column-major order of the 32 x 32 grid, contiguous runs per thread: a B column slab
  // (2 x 16 columns x K2) is used for every row block while it is in L1/L2, A streams from L2. A
  // fused weight update goes row-major instead (each thread then walks its own rows of the weight
  // and its state, as gemm_block's row-panel order).
  const bool rows_first = P.args->update != nullptr;
  parallel_for(mb * nb, threaded ? 1 : mb * nb, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float cbuf[32 * 32];
    amx_begin();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ib = rows_first ? t / nb : t % mb, jb = rows_first ? t % nb : t / mb;
      amx_block(abf + ib * 32 * K2, bv + jb * 2 * (K2 / 2) * 16, K2, cbuf);
      const int64_t n = N - jb * 32 < 32 ? N - jb * 32 : 32;
      for (int h = 0; h < 2; ++h) {
        const int64_t i = ib * 32 + h * 16;
        if (i >= M) break;
        Vec<float> acc[16][2];
        for (int r = 0; r < 16; ++r) {
          acc[r][0] = Vec<float>::load(cbuf + (h * 16 + r) * 32);
          acc[r][1] = Vec<float>::load(cbuf + (h * 16 + r) * 32 + 16);
        }
        const TileEpilogue<float> e{false, true, i, jb * 32, &g, P.f};
        store_tile<float, 16, 2>(acc, P.c + i * P.ldc + jb * 32, P.ldc, M - i < 16 ? M - i : 16, n, e);
      }
    }
    amx_end();
  });
}
#else
constexpr bool kHaveAmx = false;
inline bool amx_enabled() { return false; }
void gemm_amx(const Problem<float>&) {}
#endif

// Rows [i, i + mc) of A, K block [pc, pc + kc), into MR-row panels at dst (pack_a, with the row
// and column shifts of GemmArgs).
template <class T>
void pack_a_at(const Problem<T>& P, int64_t i, int64_t mc, int64_t pc, int64_t kc, T* dst, int bf16) {
  const GemmArgs<T>& g = *P.args;
  pack_a<T>(mc, kc, P.a + i * P.rsa + pc * P.csa, P.rsa, P.csa, dst, g.a_row_shift ? g.a_row_shift + i : nullptr,
            g.a_col_shift ? g.a_col_shift + pc : nullptr, bf16);
}

// The B panel of columns [j, j + nr), K block [pc, pc + kc), at dst (pack_b_panel, with the column
// shift and the DropConnect keep bits of GemmArgs).
template <class T>
void pack_b_at(const Problem<T>& P, int64_t pc, int64_t kc, int64_t j, int64_t nr, T* dst, int bf16) {
  const GemmArgs<T>& g = *P.args;
  BPrologue<T> pro;
  if (g.b_col_shift) pro.csh = g.b_col_shift + j;
  if (g.b_bits) {
    pro.bits = g.b_bits;
    pro.bit0 = pc * g.b_bits_rs + j * g.b_bits_cs;
    pro.brs = g.b_bits_rs;
    pro.bcs = g.b_bits_cs;
    pro.scale = g.b_scale;
  }
  pack_b_panel<T>(kc, nr, P.b + pc * P.rsb + j * P.csb, P.rsb, P.csb, dst, pro, bf16);
}

// The tiles of C rows [ic, ic + mc) x columns [jc, jc + nc) for one K block (kcp packed), from
// the packed A block (panel ir at apack + ir * kcp) and B block (panel jr at bpack + jr * kcp).
// Column-panel order (a B micro-panel stays in L1 while the A panels stream past it), or for a
// fused weight update row-panel order: consecutive tiles then walk along the same rows of the
// weight and its state, which the epilogue reads and writes (down a column panel, each tile's rows
// were new lines 4 KiB apart, which the hardware prefetchers do not follow: the fused update ran
// slower than the separate pass).
template <class T>
void block_tiles(const Problem<T>& P, bool dp, const T* apack, const T* bpack, int64_t kcp, int64_t ic, int64_t mc,
                 int64_t jc, int64_t nc, TileEpilogue<T>& e) {
  constexpr int64_t MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  const GemmArgs<T>& g = *P.args;
  const int64_t njr = (nc + NR - 1) / NR, nir = (mc + MR - 1) / MR;
  const bool rows_first = g.update != nullptr;
  for (int64_t q = 0; q < njr * nir; ++q) {
    const int64_t jr = (rows_first ? q % njr : q / nir) * NR, ir = (rows_first ? q / njr : q % nir) * MR;
    const int64_t j = jc + jr, nr = nc - jr < NR ? nc - jr : NR;
    const int64_t m = mc - ir < MR ? mc - ir : MR;
    if (g.upper && j + nr <= ic + ir) continue;  // the tile is under the diagonal
    e.gj = j;
    e.gi = ic + ir;
    const T* ap = apack + ir * kcp;
    T* cp = P.c + (ic + ir) * P.ldc + j;
    const T* bp = bpack + jr * kcp;
    if (dp) {
      if (m <= Tile<T>::E1) tile_dp<T, Tile<T>::E1>(kcp, ap, bp, cp, P.ldc, m, nr, e);
      else if (m <= Tile<T>::E2) tile_dp<T, Tile<T>::E2>(kcp, ap, bp, cp, P.ldc, m, nr, e);
      else tile_dp<T, MR>(kcp, ap, bp, cp, P.ldc, m, nr, e);
    } else if (m <= Tile<T>::E1) tile<T, Tile<T>::E1>(kcp, ap, bp, cp, P.ldc, m, nr, e);
    else if (m <= Tile<T>::E2) tile<T, Tile<T>::E2>(kcp, ap, bp, cp, P.ldc, m, nr, e);
    else tile<T, MR>(kcp, ap, bp, cp, P.ldc, m, nr, e);
  }
}

// B packed whole (all of K, the thread's columns), the C-once order: ic outer, and for each tile
// every K block in turn, the block sums added in registers, C written once. Each C element is the
// same sum as in gemm_block (block partials from zero, added in block order; a float stored and
// reloaded is exact), so the two orders give the same bits. It pays when C is much larger than the
// last-level cache (PCA's 60000 x 784 projection: 188 MB streamed once instead of once per K block).
template <class T>
void gemm_block_c_once(const Problem<T>& P, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  using B = Blocking<T>;
  constexpr int64_t MR = B::MR, NR = B::NR;
  const GemmArgs<T>& g = *P.args;
  const int64_t N = j1 - j0, K = P.K;
  const bool dp = kHaveDp && g.bf16 && sizeof(T) == 4 && dp_enabled();
  const int bf16 = !g.bf16 ? kPackF32 : dp ? kPackBf16Pairs : kPackBf16Floats;
  const int64_t kc_max = k_block<T>(K, g.bf16);
  const int64_t Kp = K + 1;  // packed K with the last block's pad row (bf16, odd K)
  const int64_t np = (N + NR - 1) / NR;
  // The A block, all of K, in about half of L2 (512 KiB), as gemm_block's MC x KC.
  int64_t mc_max = (512 * 1024) / (K * static_cast<int64_t>(sizeof(T))) / MR * MR;
  if (mc_max < MR) mc_max = MR;
  Scratch<T> buf(Kp * np * NR + mc_max * Kp);
  T* const bpack = buf.p;                // K block p at bpack + p * kc_max * np * NR, panel jr at + jr * kcp
  T* const apack = buf.p + Kp * np * NR;  // K block p at apack + p * kc_max * mc_max, panel ir at + ir * kcp
  for (int64_t pc = 0; pc < K; pc += kc_max) {
    const int64_t kc = K - pc < kc_max ? K - pc : kc_max;
    for (int64_t jr = 0; jr < N; jr += NR) {
      pack_b_at(P, pc, kc, j0 + jr, N - jr < NR ? N - jr : NR, bpack + pc * np * NR + jr * k_packed(kc, bf16), bf16);
    }
  }
  constexpr int NV = Tile<T>::NV;
  using V = Vec<T>;
  for (int64_t ic = i0; ic < i1; ic += mc_max) {
    const int64_t mc = i1 - ic < mc_max ? i1 - ic : mc_max;
    for (int64_t pc = 0; pc < K; pc += kc_max) {
      const int64_t kc = K - pc < kc_max ? K - pc : kc_max;
      pack_a_at(P, ic, mc, pc, kc, apack + pc * mc_max, bf16);
    }
    for (int64_t jr = 0; jr < N; jr += NR) {
      const int64_t nr = N - jr < NR ? N - jr : NR;
      for (int64_t ir = 0; ir < mc; ir += MR) {
        const int64_t m = mc - ir < MR ? mc - ir : MR;
        TileEpilogue<T> e{false, true, ic + ir, j0 + jr, &g, P.f};
        T* cp = P.c + (ic + ir) * P.ldc + j0 + jr;
        // acc stays in registers only while no reference to it escapes: choosing between two arrays
        // by reference, or passing acc to the out-of-line dp kernel, kept all 28 accumulators in
        // memory (28 stores per k step, half the FMA rate). sum takes each K block's tile once.
        V sum[MR][NV];
        for (int64_t pc = 0; pc < K; pc += kc_max) {
          const int64_t kc = k_packed(K - pc < kc_max ? K - pc : kc_max, bf16);
          const T* ap = apack + pc * mc_max + ir * kc;
          const T* bp = bpack + pc * np * NR + jr * kc;
          V acc[MR][NV];
          if (dp) {  // (its own array: one passed to the out-of-line dp kernel lives in memory)
            V dpa[MR][NV];
            micro_kernel_dp<MR>(kc, ap, bp, dpa);
#pragma GCC unroll 16
            for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
              for (int v = 0; v < NV; ++v) acc[i][v] = dpa[i][v];
          } else {
            micro_kernel<T, MR, NV, MR>(kc, ap, bp, acc);
          }
#pragma GCC unroll 16
          for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) sum[i][v] = pc == 0 ? acc[i][v] : sum[i][v] + acc[i][v];
        }
        store_tile<T, MR, NV>(sum, cp, P.ldc, m, nr, e);
      }
    }
  }
}

// Whether gemm_block_c_once is the better order: C (all of it) is far larger than the last-level
// cache, so the per-K-block passes over it go to memory, while B packed whole for every thread
// fits in half of it (the other half for A blocks and C lines passing through). Either order gives
// the same bits, so this may depend on the thread count.
template <class T>
bool c_once_pays(int64_t M, int64_t N, int64_t K, int64_t threads, bool upper) {
  if (upper || K <= Blocking<T>::KC) return false;  // one K block: C is written once anyway
  // The queried size is not trusted upward: this Zen 4 VM reports 300 MiB (the cores own 32 MiB).
  const double llc = static_cast<double>(llc_bytes() < (32ll << 20) ? llc_bytes() : (32ll << 20));
  const double c_bytes = double(M) * double(N) * sizeof(T);
  const double b_bytes = double(K) * double(N + Blocking<T>::NR) * sizeof(T) * double(threads);
  return c_bytes > 2.0 * llc && b_bytes <= 0.5 * llc;
}

// The BLIS loop nest on one thread, over the block [i0, i1) x [j0, j1) of C, with its own
// packing buffers.
template <class T>
void gemm_block(const Problem<T>& P, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  using B = Blocking<T>;
  constexpr int64_t MR = B::MR, NR = B::NR, MC = B::MC, NC = B::NC;
  const GemmArgs<T>& g = *P.args;
  const int64_t M = i1 - i0, N = j1 - j0, K = P.K;
  const bool dp = kHaveDp && g.bf16 && sizeof(T) == 4 && dp_enabled();
  const int bf16 = !g.bf16 ? kPackF32 : dp ? kPackBf16Pairs : kPackBf16Floats;
  const int64_t kc_max = k_block<T>(K, g.bf16);
  const int64_t kp_max = k_packed(kc_max, bf16);
  const int64_t nc_max = ((N < NC ? N : NC) + NR - 1) / NR * NR;
  const int64_t mc_max = ((M < MC ? M : MC) + MR - 1) / MR * MR;
  Scratch<T> buf(kp_max * (nc_max + mc_max));
  T* const bpack_p = buf.p;
  T* const apack_p = buf.p + kp_max * nc_max;
  for (int64_t jc = j0; jc < j1; jc += NC) {
    const int64_t nc = j1 - jc < NC ? j1 - jc : NC;
    if (g.upper && jc + nc <= i0) continue;  // wholly below the diagonal
    for (int64_t pc = 0;; pc += kc_max) {  // at least once: K == 0 still writes C (zeros + epilogue)
      const int64_t kc = K - pc < kc_max ? K - pc : kc_max;
      const int64_t kcp = k_packed(kc, bf16);
      TileEpilogue<T> e{pc > 0, pc + kc >= K, 0, 0, &g, P.f};
      for (int64_t jr = 0; jr < nc; jr += NR) {
        pack_b_at(P, pc, kc, jc + jr, nc - jr < NR ? nc - jr : NR, bpack_p + jr * kcp, bf16);
      }
      for (int64_t ic = i0; ic < i1; ic += MC) {
        const int64_t mc = i1 - ic < MC ? i1 - ic : MC;
        if (g.upper && jc + nc <= ic) break;  // this and later row blocks are below the diagonal
        pack_a_at(P, ic, mc, pc, kc, apack_p, bf16);
        block_tiles(P, dp, apack_p, bpack_p, kcp, ic, mc, jc, nc, e);
      }
      if (pc + kc >= K) break;
    }
  }
}


// Shared packing with claimed chunks, for products whose unsplit operand is small (the training
// step's 128 x 784 x 512 and its backward products). The operand the threads do not split (A when
// they split N, B when they split M) is packed once for all of them, in chunks that any thread
// claims; the split dimension is cut into about 8 chunks of whole micro-panels per thread, each
// claimed in turn, with its own K-block loop and private packing of the split operand. Against one
// static block per thread with private packing (gemm_block): the unsplit operand is packed once
// instead of once per thread (on Zen 4 the bf16 conversion was ~13 % of the 2-thread
// 128 x 784 x 512 call, each thread converting all of A), and a thread that falls behind no longer
// holds back a fixed half of the product. Measured on Zen 3 (AVX2, 2 threads, paired rounds):
// 128 x 512 x 256 0-8 % faster, 128 x 784 x 512, 512 x 128 x 784 and 1024^3 within noise, 3
// threads on the 2 cores ~10 % faster, a Trainer.fit epoch within noise (medians 0.98-1.04x). Each C
// element is still the same chain over the same K blocks in order, so the bits do not change. No
// thread waits on another except for the shared packing's chunks in flight (whoever claimed one is
// running it), so a region run on one thread (the pool busy) simply does every chunk itself.
struct alignas(64) ClaimCounter {
  int64_t v = 0;
  int64_t next() { return __atomic_fetch_add(&v, 1, __ATOMIC_RELAXED); }
};

constexpr int64_t kSharedPackBytes = int64_t(4) << 20;  // the shared operand, packed, at most

template <class T>
bool shared_pays(int64_t M, int64_t N, int64_t K, int64_t tasks, bool along_m, bool bf16) {
  using B = Blocking<T>;
  if (tasks < 2 || K <= 0) return false;
  // along N, the shared A is every ic block: one (M <= MC); along M, the shared B is every jc block: one
  if (along_m ? N > B::NC : M > B::MC) return false;
  const int64_t rows = along_m ? (N + B::NR - 1) / B::NR * B::NR : (M + B::MR - 1) / B::MR * B::MR;
  return double(rows) * double(K + (bf16 ? 2 : 0)) * double(sizeof(T)) <= double(kSharedPackBytes);
}

template <class T>
void gemm_shared(const Problem<T>& P, bool along_m, int64_t threads) {
  constexpr int64_t MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  const GemmArgs<T>& g = *P.args;
  const int64_t M = P.M, N = P.N, K = P.K;
  const bool dp = kHaveDp && g.bf16 && sizeof(T) == 4 && dp_enabled();
  const int bf16 = !g.bf16 ? kPackF32 : dp ? kPackBf16Pairs : kPackBf16Floats;
  const int64_t kc_max = k_block<T>(K, g.bf16), kp_max = k_packed(kc_max, bf16);
  const int64_t kblocks = (K + kc_max - 1) / kc_max;
  // The shared operand: sp panels of R rows (A) or columns (B) per K block, block b at
  // shared + b * sp * R * kp_max, panel p of it at + p * R * kcp (gemm_block's layout).
  const int64_t R = along_m ? NR : MR, sp = along_m ? (N + NR - 1) / NR : (M + MR - 1) / MR;
  const int64_t span = sp * R * kp_max;
  constexpr int64_t kPackPanels = 4;  // panels per claimed packing chunk
  const int64_t pack_chunks_per_block = (sp + kPackPanels - 1) / kPackPanels;
  const int64_t pack_chunks = kblocks * pack_chunks_per_block;
  // The split operand: wp panels in chunks of G (about 8 per thread).
  const int64_t W = along_m ? MR : NR, wp = along_m ? (M + MR - 1) / MR : (N + NR - 1) / NR;
  int64_t G = wp / (8 * threads);
  if (G < 1) G = 1;
  const int64_t work_chunks = (wp + G - 1) / G;
  Scratch<T> shared(kblocks * span);
  ClaimCounter pack_next, pack_done, work_next;
  parallel_for(threads, 1, 1, [&](int64_t, int64_t) {
    for (int64_t c; (c = pack_next.next()) < pack_chunks;) {
      const int64_t b = c / pack_chunks_per_block, p0 = c % pack_chunks_per_block * kPackPanels;
      const int64_t p1 = p0 + kPackPanels < sp ? p0 + kPackPanels : sp;
      const int64_t pc = b * kc_max, kc = K - pc < kc_max ? K - pc : kc_max, kcp = k_packed(kc, bf16);
      T* dst = shared.p + b * span + p0 * R * kcp;
      if (along_m) {
        for (int64_t p = p0; p < p1; ++p)
          pack_b_at(P, pc, kc, p * NR, N - p * NR < NR ? N - p * NR : NR, dst + (p - p0) * NR * kcp, bf16);
      } else {
        pack_a_at(P, p0 * MR, (p1 * MR < M ? p1 * MR : M) - p0 * MR, pc, kc, dst, bf16);
      }
      __atomic_fetch_add(&pack_done.v, 1, __ATOMIC_RELEASE);
    }
    while (__atomic_load_n(&pack_done.v, __ATOMIC_ACQUIRE) < pack_chunks) __builtin_ia32_pause();
    Scratch<T> own(G * W * kp_max);
    for (int64_t c; (c = work_next.next()) < work_chunks;) {
      const int64_t s0 = c * G * W, s1 = (c + 1) * G * W < (along_m ? M : N) ? (c + 1) * G * W : (along_m ? M : N);
      for (int64_t b = 0; b < kblocks; ++b) {
        const int64_t pc = b * kc_max, kc = K - pc < kc_max ? K - pc : kc_max, kcp = k_packed(kc, bf16);
        TileEpilogue<T> e{pc > 0, pc + kc >= K, 0, 0, &g, P.f};
        if (along_m) {
          pack_a_at(P, s0, s1 - s0, pc, kc, own.p, bf16);
          block_tiles(P, dp, own.p, shared.p + b * span, kcp, s0, s1 - s0, 0, N, e);
        } else {
          for (int64_t j = s0; j < s1; j += NR)
            pack_b_at(P, pc, kc, j, s1 - j < NR ? s1 - j : NR, own.p + (j - s0) * kcp, bf16);
          block_tiles(P, dp, shared.p + b * span, own.p, kcp, 0, M, s0, s1 - s0, e);
        }
      }
    }
  });
}

// Threads split C along M or N (whichever costs less: split_cost) into whole micro-panels: chunks
// around the shared unsplit operand where it is small (gemm_shared), else one block per thread
// that runs the whole loop nest with private packing. One pool region per call. Each element of C is the same chain of FMAs over the same KC blocks wherever its
// block falls, so the result does not depend on the split (nor on the thread count). With upper,
// the split is along M with equal counts of tiles at or above the diagonal per thread.
template <class T>
void gemm_driver(int64_t M, int64_t N, int64_t K, const T* a, int64_t rsa, int64_t csa, const T* b, int64_t rsb,
                 int64_t csb, T* c, int64_t ldc, const GemmArgs<T>& args) {
  constexpr int64_t MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  if (M <= 0 || N <= 0) return;
  const ActForward<Vec<T>> f(args.act != kActPrelu ? args.act : kActIdentity, args.params);
  const Problem<T> P{M, N, K, a, rsa, csa, b, rsb, csb, c, ldc, &args, &f};
  if constexpr (sizeof(T) == 4) {
    // (the prologues, shifts and DropConnect bits, live in the panel packing: those products take
    // the vdpbf16ps path)
    if (kHaveAmx && args.bf16 && !args.upper && !args.a_row_shift && !args.a_col_shift && !args.b_col_shift &&
        !args.b_bits && amx_enabled())
      return gemm_amx(P);
  }
  const int64_t mp = (M + MR - 1) / MR, np = (N + NR - 1) / NR;
  const int64_t threads = num_threads();
  // Per-thread cost of each split, in cycles: its share of the FMAs (whole panels, so an odd
  // panel count costs the thread with one more) at one vector FMA per cycle per lane group, plus
  // the packing it does (each thread packs the whole of the operand it does not split), at
  // about half a cycle per element. 256x784x512 on 2 threads: along N, 12 % cheaper than the
  // 19 row panels' 10/9 split that also packs all of W twice.
  auto split_cost = [&](bool by_m) {
    const int64_t t = threads < (by_m ? mp : np) ? threads : (by_m ? mp : np);
    const int64_t share = ((by_m ? mp : np) + t - 1) / t;
    const double rows = by_m ? double(share * MR) : double(M), cols = by_m ? double(N) : double(share * NR);
    const double fmas = rows * cols * double(K) / double(Vec<T>::W * 2);
    const double pack = by_m ? double(K) * (double(N) + rows) : double(K) * (double(M) + cols);
    return fmas + 0.5 * pack;
  };
  const bool along_m = args.upper || split_cost(true) <= split_cost(false);
  const int64_t panels = along_m ? mp : np;
  int64_t tasks = threads;
  if (tasks > panels) tasks = panels;
  // (the tiles' work, padded panels included: 128x256x10 is 3.2 times its useful flops)
  if (2 * (mp * MR) * (np * NR) * (K > 0 ? K : 1) < kMinThreadFlops * tasks) tasks = 1;
  // Work of row panel p under upper: the column panels that reach the diagonal or beyond.
  auto upper_work = [&](int64_t p) { return np - (p * MR) / NR; };
  int64_t total = 0;
  if (args.upper)
    for (int64_t p = 0; p < mp; ++p) total += upper_work(p);
  auto boundary = [&](int64_t t) -> int64_t {  // first panel of task t
    if (!args.upper) return panels * t / tasks;
    const int64_t target = total * t / tasks;
    int64_t p = 0;
    for (int64_t acc = 0; p < mp && acc < target; ++p) acc += upper_work(p);
    return p;
  };
  const bool c_once = c_once_pays<T>(M, N, K, tasks, args.upper);
  if (!args.upper && !c_once && shared_pays<T>(M, N, K, tasks, along_m, args.bf16))
    return gemm_shared(P, along_m, tasks);
  auto block = c_once ? &gemm_block_c_once<T> : &gemm_block<T>;
  parallel_for(tasks, 1, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p0 = boundary(t), p1 = boundary(t + 1);
      if (p0 >= p1) continue;
      if (along_m) block(P, p0 * MR, p1 * MR < M ? p1 * MR : M, 0, N);
      else block(P, 0, M, p0 * NR, p1 * NR < N ? p1 * NR : N);
    }
  });
}

// ---- the backward's first pass -----------------------------------------------------------------

constexpr int64_t kGradRows = 64;  // rows per fixed reduction block

template <class T>
void linear_grad(const LinearGradArgs<T>& A) {
  using V = Vec<T>;
  const int64_t M = A.M, N = A.N;
  if (M <= 0 || N <= 0) {
    for (int64_t j = 0; j < N && A.grad_b; ++j) A.grad_b[j] = T(0);
    for (int64_t j = 0; j < A.prelu_n && A.grad_w; ++j) A.grad_w[j] = T(0);
    return;
  }
  const int64_t nblocks = (M + kGradRows - 1) / kGradRows;
  // Per block partial column sums in T: [nblocks][N] for grad_b, then [nblocks][N] for prelu.
  const bool want_b = A.grad_b != nullptr, want_w = A.grad_w != nullptr && A.act == kActPrelu;
  const int64_t nsums = (want_b ? 1 : 0) + (want_w ? 1 : 0);
  Scratch<T> partial(nsums * nblocks * N + 1);
  T* const pb = partial.p;
  T* const pw = partial.p + (want_b ? nblocks * N : 0);
  const V zero = V::set1(T(0)), one = V::set1(T(1));
  const V s = V::set1(A.drop_scale);
  const T inv_s = A.drop_scale != T(0) ? T(1) / A.drop_scale : T(0);
  const V slope = V::set1(static_cast<T>(A.params.slope));
  const V pos_d = V::set1(static_cast<T>(A.params.scale));
  const V neg_d = V::set1(static_cast<T>(A.params.scale * A.params.alpha));
  const bool rescale_y = A.keep_bits != nullptr && A.y != nullptr;  // y saved after dropout
  // The arguments as locals (the stores to gz and the sums could alias A's fields, which made the
  // compiler reload them every vector) and the activation as a template argument (no switch per
  // vector): the same arithmetic per element as before, ~3.5x faster (its share of a Trainer epoch on
  // Zen 3: 1.56 % -> 0.44 % of the samples).
  const T* const gp = A.g;
  const int64_t ldg = A.ldg;
  const T* const yp = A.y;
  const T* const zp = A.z;
  const uint8_t* const posb = A.pos_bits;
  const int64_t pos_ld = A.pos_ld;
  const uint8_t* const keepb = A.keep_bits;
  const T* const prelu_w = A.prelu_w;
  const int64_t prelu_n = A.prelu_n;
  T* const gzp = A.gz;
  const V inv_sv = V::set1(inv_s);
  auto rows = [=](auto act_c, int64_t r0, int64_t r1, T* sb, T* sw) {
    constexpr int act = decltype(act_c)::value;
    for (int64_t i = r0; i < r1; ++i) {
      const T* g = gp + i * ldg;
      T* gz = gzp + i * N;
      const uint8_t* prow = posb ? posb + i * pos_ld : nullptr;
      for (int64_t j = 0; j < N; j += V::W) {
        const int64_t cols = N - j < V::W ? N - j : V::W;
        const bool full = cols == V::W;
        auto ld = [&](const T* p) { return full ? V::load(p) : V::load_partial(p, cols); };
        V gk = ld(g + j);
        if constexpr (act != kActRelu) {  // (ReLU: the pos bit holds keep and the scale is applied below)
          if (keepb) gk = gk * select(V::mask_from_bits(static_cast<uint32_t>(bits_at(keepb, i * N + j))), s, zero);
          else gk = gk * s;
        }
        V out = gk, yv = zero, zv = zero;
        if constexpr (act == kActSigmoid || act == kActTanh || act == kActElu) {
          if (yp) {
            yv = ld(yp + i * N + j);
            if (rescale_y) yv = yv * inv_sv;
          }
        }
        if constexpr (act == kActPrelu) {
          if (zp) zv = ld(zp + i * N + j);
        }
        // This vector's sign bits: for a full vector the one or two bytes that hold them (j is a
        // multiple of V::W <= 16, so they lie in the row); bits_at_row only at a row's tail.
        auto pos = [&]() {
          static_assert(V::W <= 16, "a vector's bits span at most two bytes");
          if (full) {
            uint32_t w = prow[j >> 3];
            if constexpr (V::W > 8) w |= static_cast<uint32_t>(prow[(j >> 3) + 1]) << 8;
            return V::mask_from_bits(w >> (j & 7));
          }
          return V::mask_from_bits(static_cast<uint32_t>(bits_at_row(prow, j, pos_ld)));
        };
        if constexpr (act == kActSigmoid) out = gk * (yv * (one - yv));
        else if constexpr (act == kActTanh) out = gk * fnmadd(yv, yv, one);
        else if constexpr (act == kActRelu) out = gk * select(pos(), s, zero);
        else if constexpr (act == kActLeakyRelu) out = gk * select(pos(), one, slope);
        else if constexpr (act == kActElu) out = gk * select(pos(), pos_d, yv + neg_d);
        else if constexpr (act == kActPrelu) {
          const V w = prelu_n == 1 ? V::set1(prelu_w[0]) : ld(prelu_w + j);
          const auto zpos = cmp_gt(zv, zero);
          out = gk * select(zpos, one, w);
          if (sw) (ld(sw + j) + select(zpos, zero, gk * zv)).store_partial(sw + j, cols);
        }
        if (full) out.store(gz + j);
        else out.store_partial(gz + j, cols);
        if (sb) (ld(sb + j) + out).store_partial(sb + j, cols);
      }
    }
  };
  auto block = [&](int64_t blk) {
    const int64_t r0 = blk * kGradRows, r1 = r0 + kGradRows < M ? r0 + kGradRows : M;
    T* sb = want_b ? pb + blk * N : nullptr;
    T* sw = want_w ? pw + blk * N : nullptr;
    for (int64_t j = 0; j < N; ++j) {
      if (sb) sb[j] = T(0);
      if (sw) sw[j] = T(0);
    }
    using std::integral_constant;
    switch (A.act) {
      case kActSigmoid: rows(integral_constant<int, kActSigmoid>{}, r0, r1, sb, sw); break;
      case kActTanh: rows(integral_constant<int, kActTanh>{}, r0, r1, sb, sw); break;
      case kActRelu: rows(integral_constant<int, kActRelu>{}, r0, r1, sb, sw); break;
      case kActLeakyRelu: rows(integral_constant<int, kActLeakyRelu>{}, r0, r1, sb, sw); break;
      case kActElu: rows(integral_constant<int, kActElu>{}, r0, r1, sb, sw); break;
      case kActPrelu: rows(integral_constant<int, kActPrelu>{}, r0, r1, sb, sw); break;
      default: rows(integral_constant<int, kActIdentity>{}, r0, r1, sb, sw); break;
    }
  };
  const int64_t grain = (kGrainElements + kGradRows * N - 1) / (kGradRows * N);
  parallel_for(nblocks, grain, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) block(blk);
  });
  if (want_b)
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t blk = 0; blk < nblocks; ++blk) acc += static_cast<double>(pb[blk * N + j]);
      A.grad_b[j] = static_cast<T>(acc);
    }
  if (want_w) {
    if (A.prelu_n == 1) {
      double acc = 0.0;
      for (int64_t blk = 0; blk < nblocks; ++blk)
        for (int64_t j = 0; j < N; ++j) acc += static_cast<double>(pw[blk * N + j]);
      A.grad_w[0] = static_cast<T>(acc);
    } else {
      for (int64_t j = 0; j < N; ++j) {
        double acc = 0.0;
        for (int64_t blk = 0; blk < nblocks; ++blk) acc += static_cast<double>(pw[blk * N + j]);
        A.grad_w[j] = static_cast<T>(acc);
      }
    }
  }
}

template <class T>
constexpr GemmKernelsT<T> make_table() {
  return GemmKernelsT<T>{&gemm_driver<T>, &linear_grad<T>, Blocking<T>::MR, Blocking<T>::NR};
}

}  // namespace

extern const GemmKernels kGemmKernels;
constexpr GemmKernels kGemmKernels{make_table<float>(), make_table<double>()};

}  // namespace FASTNN_ISA_NS
}  // namespace fastnn
