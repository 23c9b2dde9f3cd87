// The CPU GEMM family: one table per ISA (csrc/cpu/gemm.cpp compiled three times).
//   C (M x N) = epilogue(prologue_A(A (M x K)) . prologue_B(B (K x N)))
// A and B are read through (row stride, column stride) in elements, so a C- or F-contiguous
// operand (or its transpose) is used as it lies, never copy-transposed. C is row-major with row
// stride ldc. The kernel threads itself over the project pool; each C tile is computed the same
// way whatever the thread count (K is never split), so results are bit-identical for any count.
//
// The prologues act while a panel is packed (no modified copy of an operand is ever made); the
// epilogue acts on each C tile while it is in registers, after the last K block. Together they
// are the fused linear layer (csrc/cpu/linear.cpp):
//   forward   y = dropout(act(x . (W * dropconnect)^T + bias))
//   backward  gz = g * keep * act'   (linear_grad, one pass; also grad_b)
//             grad_x = gz . (W * dropconnect),  grad_W = (gz^T . x) * dropconnect (epilogue mask)
#pragma once

#include <cstdint>

#include "cpu/activation.h"
#include "cpu/optim.h"

namespace fastnn {

// Bit i of a packed bit array (bit 0 of byte 0 first), as dropout_mask lays them out. Readers
// fetch 64 bits from any bit position, so every bit array handed to the GEMM has 8 bytes of
// padding after its last byte.
constexpr int64_t kBitPad = 8;

// The optimizer's update of a weight applied by the epilogue of its gradient's GEMM (C = grad_W,
// same shape and layout as w): for each final C vector g, w and the state at the same place are
// updated by optim_math.h's SgdUpdate / AdamUpdate, exactly as the update kernels would from a
// stored gradient (the same bits), and C is not written. The gradient never goes to memory: a
// training step saves its store and the update pass's read of it. sumsq (null: not wanted): per
// tile, with first row i and column block q (NR columns), the float64 sum of the squared new
// weights of the tile at sumsq[(i / MR) * sumsq_ld + q] (MR, NR: the kernel table's mr, nr; AMX
// tiles are 16 rows, so their slots are distinct too). Zeroed by the caller, which adds all slots
// in order: the tiles lie on a grid fixed by the ISA path, so the value does not depend on the
// thread count.
template <class T>
struct FusedUpdate {
  enum Kind { kSgd = 1, kAdam = 2 };
  int kind = 0;
  T* w = nullptr;
  T* s1 = nullptr;  // SGD: the momentum buffer (null without momentum); Adam: exp_avg
  T* s2 = nullptr;  // Adam: exp_avg_sq
  int64_t ld = 0;   // row stride of w, s1, s2 (elements)
  SgdArgs sgd;
  AdamArgs adam;
  double* sumsq = nullptr;
  int64_t sumsq_ld = 0;
};

template <class T>
struct GemmArgs {
  // ---- prologue of A: A'(i, k) = A(i, k) - a_row_shift[i] - a_col_shift[k]   (null: none)
  const T* a_row_shift = nullptr;
  const T* a_col_shift = nullptr;
  // ---- prologue of B: B'(k, j) = (B(k, j) - b_col_shift[j]) * (keep(k, j) ? b_scale : 0), keep
  // from bit k * b_bits_rs + j * b_bits_cs of b_bits (null: none). DropConnect of the weight.
  const T* b_col_shift = nullptr;
  const uint8_t* b_bits = nullptr;
  int64_t b_bits_rs = 0, b_bits_cs = 0;
  T b_scale = T(1);
  // ---- epilogue, in this order:
  //   z = acc + bias[j];  z_out(i, j) = z;  y = act(z)  (prelu: prelu_w[prelu_n == 1 ? 0 : j]);
  //   y = y * (keep(i, j) ? drop_scale : 0) with keep bit i * drop_ld + j of drop_bits;
  //   bit (i, j) of pos_bits (row stride pos_ld bytes) = pos_from_y ? !(y <= 0) : z > 0.
  const T* bias = nullptr;
  // an ActKind; kActPrelu: y = z > 0 ? z : w[j] * z with a per-column (or single) weight
  int act = kActIdentity;
  ActParams params;
  const T* prelu_w = nullptr;
  int64_t prelu_n = 0;
  const uint8_t* drop_bits = nullptr;
  int64_t drop_ld = 0;
  T drop_scale = T(1);
  T* z_out = nullptr;
  int64_t ldz = 0;
  uint8_t* pos_bits = nullptr;  // rows of pos_ld bytes, pos_ld a multiple of 8 (64-bit rows)
  int64_t pos_ld = 0;
  bool pos_from_y = false;
  // C is symmetric (M == N, the caller guarantees A . B is): compute the tiles that touch the
  // upper triangle (j >= i) only; the caller mirrors. About half the flops.
  bool upper = false;
  // float only: A and B rounded to bfloat16 while packed (round to nearest even, NaN kept NaN,
  // zero and float32 subnormal inputs to signed zero: vcvtne2ps2bf16's rule, which the AVX512_BF16
  // paths convert with and the others compute), accumulation in float. K runs in
  // pairs (2p, 2p+1) summed odd k first, two rounded FMAs, which is what vdpbf16ps computes
  // (measured on Zen 4: 3.2M random lanes bit-identical); K blocks have even length. On the
  // avx512_amx path (no prologue, not upper) the products run on AMX tiles instead: the same
  // rounded operands, sums in tdpbf16ps's own order (within K * 2^-24 * |A||B| of the exact product
  // of the rounded operands, not those bits; bit-identical for any thread count).
  bool bf16 = false;
  // Not null: the final tiles update the weight (FusedUpdate) instead of being stored, after
  // drop_bits' mask (DropConnect); no bias, activation, z_out or pos_bits with it.
  const FusedUpdate<T>* update = nullptr;
};

template <class T>
using GemmFn = void (*)(int64_t M, int64_t N, int64_t K, const T* a, int64_t rsa, int64_t csa, const T* b,
                        int64_t rsb, int64_t csb, T* c, int64_t ldc, const GemmArgs<T>& args);

// The backward's first pass over an (M, N) output gradient g (row stride ldg), one read of each
// input: gz = g * keep * act'(.), with act' from what the forward saved:
//   none: 1;  sigmoid: y (1 - y);  tanh: 1 - y^2  (y the activation output, y_saved / drop_scale
//   when dropout was applied);  relu: pos bit (taken from the post-dropout output, so it already
//   holds keep);  leaky_relu: pos ? 1 : slope;  elu/selu: pos ? scale : y + scale*alpha;
//   prelu: z > 0 ? 1 : w[j], from the saved pre-activation z.
// keep(i, j) = bit i * N + j of keep_bits (null: all kept), times drop_scale.
// grad_b[j] (if non-null) = sum over i of gz(i, j); grad_w (prelu, if non-null, prelu_n values)
// = sum of g * keep * z over z <= 0. Sums run over fixed 64-row blocks combined in double in
// block order, so they do not depend on the thread count. Threads itself.
template <class T>
struct LinearGradArgs {
  int64_t M = 0, N = 0;
  const T* g = nullptr;
  int64_t ldg = 0;
  int act = kActIdentity;
  ActParams params;
  const T* y = nullptr;  // saved output (sigmoid, tanh, elu, selu), row stride N
  const T* z = nullptr;  // saved pre-activation (prelu), row stride N
  const uint8_t* pos_bits = nullptr;
  int64_t pos_ld = 0;
  const uint8_t* keep_bits = nullptr;
  T drop_scale = T(1);
  const T* prelu_w = nullptr;
  int64_t prelu_n = 0;
  T* gz = nullptr;  // (M, N), row stride N
  T* grad_b = nullptr;
  T* grad_w = nullptr;
};

template <class T>
struct GemmKernelsT {
  GemmFn<T> gemm;
  void (*linear_grad)(const LinearGradArgs<T>& a);
  int mr, nr;  // the micro-tile, for tests and benchmarks to report
};

struct GemmKernels {
  GemmKernelsT<float> f32;
  GemmKernelsT<double> f64;
};

namespace baseline { extern const GemmKernels kGemmKernels; }
namespace avx2 { extern const GemmKernels kGemmKernels; }
namespace avx512 { extern const GemmKernels kGemmKernels; }

}  // namespace fastnn
